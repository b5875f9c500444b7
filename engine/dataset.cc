#include "engine/dataset.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace {

using Json = nlohmann::json;

// Our formats nest three deep ({"messages": [{...}]}). A line nested far deeper is refused
// before the parser builds it level by level: a megabyte of '[' would cost it tens of bytes a
// level, a whole upload's worth gigabytes.
constexpr int kMaxNesting = 8;
// So is a line of very many small values ({"a": [{},{},...]}): each costs the parsed tree some
// 80 bytes for 3 bytes of text, a 16 MiB line 400 MB. A conversation of thousands of turns
// stays far below.
constexpr int64_t kMaxValues = 65536;

absl::Status CheckNesting(std::string_view text) {
  int depth = 0;
  int64_t values = 1;  // each ',' or opening bracket outside strings starts one more
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) {
        return absl::InvalidArgumentError(
            absl::StrCat("nested deeper than ", kMaxNesting, " levels"));
      }
      ++values;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',') {
      ++values;
    }
    if (values > kMaxValues) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", kMaxValues, " JSON values in one example"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> ParseLine(const std::string& line) {
  if (line.size() > kMaxExampleLineBytes) {
    return absl::InvalidArgumentError(absl::StrCat("longer than ", kMaxExampleLineBytes >> 20,
                                                   " MiB (", line.size(),
                                                   " bytes in one example)"));
  }
  RETURN_IF_ERROR(CheckNesting(line));
  Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  return j;
}

absl::Status CheckKeys(const Json& j, std::initializer_list<const char*> allowed) {
  for (const auto& [key, value] : j.items()) {
    if (std::find_if(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; }) ==
        allowed.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected field '", key, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status StringField(const Json& j, const char* key) {
  if (!j.contains(key))
    return absl::InvalidArgumentError(absl::StrCat("missing field '", key, "'"));
  if (!j[key].is_string())
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' must be a string"));
  return absl::OkStatus();
}

absl::Status ValidateParsed(const Json& j) {
  if (j.contains("messages")) {
    RETURN_IF_ERROR(CheckKeys(j, {"messages"}));
    const Json& m = j["messages"];
    if (!m.is_array() || m.empty())
      return absl::InvalidArgumentError("field 'messages' must be a non-empty array");
    bool has_assistant = false;
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string where = absl::StrCat("messages[", i, "]");
      if (!m[i].is_object())
        return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
      if (!m[i].contains("role") || !m[i]["role"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".role must be a string"));
      }
      const std::string role = m[i]["role"];
      RETURN_IF_ERROR(CheckChatRole(i, role));
      if (!m[i].contains("content") || !m[i]["content"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".content must be a string"));
      }
      for (const auto& [key, value] : m[i].items()) {
        if (key != "role" && key != "content")
          return absl::InvalidArgumentError(
              absl::StrCat(where, " has unexpected field '", key, "'"));
      }
      has_assistant |= role == "assistant";
    }
    if (!has_assistant)
      return absl::InvalidArgumentError("'messages' has no assistant turn to learn from");
    return absl::OkStatus();
  }
  if (j.contains("prompt") || j.contains("completion")) {
    RETURN_IF_ERROR(CheckKeys(j, {"prompt", "completion"}));
    RETURN_IF_ERROR(StringField(j, "prompt"));
    RETURN_IF_ERROR(StringField(j, "completion"));
    if (j["completion"].get<std::string>().empty())
      return absl::InvalidArgumentError("field 'completion' is empty");
    return absl::OkStatus();
  }
  if (j.contains("text")) {
    RETURN_IF_ERROR(CheckKeys(j, {"text"}));
    RETURN_IF_ERROR(StringField(j, "text"));
    if (j["text"].get<std::string>().empty())
      return absl::InvalidArgumentError("field 'text' is empty");
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      "expected one of {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"}");
}

// Appends the tokens of `text` with the given target flag.
absl::Status Append(const Tokenizer& tok, const std::string& text, bool target,
                    TokenizedExample* ex) {
  if (text.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode(text));
  ex->tokens.insert(ex->tokens.end(), ids.begin(), ids.end());
  ex->is_target.insert(ex->is_target.end(), ids.size(), target ? 1 : 0);
  return absl::OkStatus();
}

void AppendToken(int32_t id, bool target, TokenizedExample* ex) {
  ex->tokens.push_back(id);
  ex->is_target.push_back(target ? 1 : 0);
}

std::string RoleHeader(const std::string& role) {
  if (role == "system") return "### System:\n";
  if (role == "user") return "### User:\n";
  return "### Assistant:\n";
}

// One turn in the chat layout, the same for training and for a generation prompt: an assistant
// turn is its header, its content and EOS (learnt from when `learn`), any other its header and
// content and a blank line.
absl::Status AppendTurn(const Tokenizer& tok, const std::string& role, const std::string& content,
                        bool learn, TokenizedExample* ex) {
  if (role != "assistant") return Append(tok, RoleHeader(role) + content + "\n\n", false, ex);
  RETURN_IF_ERROR(Append(tok, RoleHeader(role), false, ex));
  RETURN_IF_ERROR(Append(tok, content, learn, ex));
  AppendToken(tok.eos_id(), learn, ex);
  return absl::OkStatus();
}

absl::StatusOr<TokenizedExample> Tokenize(const Json& j, const Tokenizer& tok) {
  TokenizedExample ex;
  AppendToken(tok.bos_id(), false, &ex);
  if (j.contains("messages")) {
    for (const Json& m : j["messages"]) {
      RETURN_IF_ERROR(AppendTurn(tok, m["role"], m["content"], /*learn=*/true, &ex));
    }
  } else if (j.contains("prompt")) {
    RETURN_IF_ERROR(Append(tok, j["prompt"].get<std::string>(), false, &ex));
    RETURN_IF_ERROR(Append(tok, j["completion"].get<std::string>(), true, &ex));
    AppendToken(tok.eos_id(), true, &ex);
  } else {
    RETURN_IF_ERROR(Append(tok, j["text"].get<std::string>(), true, &ex));
    AppendToken(tok.eos_id(), true, &ex);
  }
  return ex;
}

}  // namespace

void BadLines::Add(int64_t line, absl::string_view what) {
  if (++count_ > kMaxShown) return;
  const bool cut = what.size() > kMaxWhatBytes;
  if (cut) {
    size_t end = kMaxWhatBytes;  // never inside a UTF-8 sequence
    while (end > 0 && (static_cast<unsigned char>(what[end]) & 0xC0) == 0x80) --end;
    what = what.substr(0, end);
  }
  absl::StrAppend(&shown_, shown_.empty() ? "" : "; ",
                  source_.empty() ? absl::StrCat("line ", line) : absl::StrCat(source_, ":", line),
                  ": ", what, cut ? "..." : "");
}

absl::Status BadLines::ToStatus() const {
  if (count_ == 0) return absl::OkStatus();
  if (count_ == 1) return absl::InvalidArgumentError(shown_);
  // The count first: the daemon shortens a long error from its end (server/grpc/call.h).
  return absl::InvalidArgumentError(absl::StrCat(
      count_, " bad lines", count_ > kMaxShown ? absl::StrCat(", the first ", kMaxShown) : "", ": ",
      shown_));
}

absl::Status ValidateExampleJson(const std::string& line) {
  ASSIGN_OR_RETURN(Json j, ParseLine(line));
  return ValidateParsed(j);
}

absl::StatusOr<std::vector<TokenizedExample>> TokenizeJsonl(const std::string& text,
                                                            const Tokenizer& tokenizer,
                                                            const std::string& source) {
  std::vector<TokenizedExample> out;
  BadLines bad(source);
  int64_t line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    std::string line(raw);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    auto j = ParseLine(line);
    if (!j.ok()) {
      bad.Add(line_no, j.status().message());
      continue;
    }
    if (auto s = ValidateParsed(*j); !s.ok()) {
      bad.Add(line_no, s.message());
      continue;
    }
    auto ex = Tokenize(*j, tokenizer);
    if (!ex.ok()) {
      bad.Add(line_no, ex.status().message());
      continue;
    }
    if (ex->num_targets() == 0) {
      bad.Add(line_no, "no target token to learn from");
      continue;
    }
    if (bad.count() > 0) continue;  // the set fails: keep no more examples
    ex->line = line_no;
    out.push_back(std::move(*ex));
  }
  RETURN_IF_ERROR(bad.ToStatus());
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no examples"));
  return out;
}

absl::Status CheckChatRole(size_t i, absl::string_view role) {
  if (role == "system" || role == "user" || role == "assistant") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("messages[", i, "].role must be system, user or assistant, got '", role, "'"));
}

absl::StatusOr<std::vector<int32_t>> ChatPromptTokens(const std::vector<ChatTurn>& turns,
                                                      const Tokenizer& tokenizer) {
  TokenizedExample ex;
  AppendToken(tokenizer.bos_id(), false, &ex);
  for (size_t i = 0; i < turns.size(); ++i) {
    RETURN_IF_ERROR(CheckChatRole(i, turns[i].role));
    RETURN_IF_ERROR(AppendTurn(tokenizer, turns[i].role, turns[i].content, /*learn=*/false, &ex));
  }
  RETURN_IF_ERROR(Append(tokenizer, RoleHeader("assistant"), false, &ex));
  return ex.tokens;
}

namespace {

// Where each example goes, decided in this one place for BuildRows and CountRows: after the
// checks, `place(example, kept_tokens, starts_a_row)` for each example in order.
template <typename Place>
absl::Status LayOutRows(const std::vector<TokenizedExample>& examples, const RowOptions& options,
                        const std::string& source, Place place) {
  const int64_t T = options.seq_len;
  if (T < 2) return absl::InvalidArgumentError(absl::StrCat("seq_len must be at least 2, got ", T));
  int64_t used = 0;  // tokens in the row being filled
  BadLines bad(source);
  for (const TokenizedExample& ex : examples) {
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(ex.tokens.size()), T);
    // Targets: position i predicts token i+1 when that token is a target.
    int64_t kept_targets = 0;
    for (int64_t i = 1; i < len; ++i) kept_targets += ex.is_target[i];
    if (kept_targets == 0) {
      bad.Add(ex.line, absl::StrCat("no target token within the sequence length of ", T,
                                    " (the example has ", ex.tokens.size(), " tokens)"));
    }
    if (bad.count() > 0) continue;  // the layout fails: place nothing more
    const bool starts = used == 0 || !options.packing || used + len > T;
    if (starts) used = 0;
    place(ex, len, starts);
    used += len;
  }
  return bad.ToStatus();
}

}  // namespace

absl::StatusOr<std::vector<TrainingRow>> BuildRows(const std::vector<TokenizedExample>& examples,
                                                   const RowOptions& options,
                                                   const std::string& source) {
  std::vector<TrainingRow> rows;
  int32_t segment = 0;
  RETURN_IF_ERROR(LayOutRows(
      examples, options, source, [&](const TokenizedExample& ex, int64_t len, bool starts) {
        if (starts) {
          rows.emplace_back();
          rows.back().seq_len = options.seq_len;  // padded in a batch, not here
          segment = 0;
        }
        TrainingRow& row = rows.back();
        for (int64_t i = 0; i < len; ++i) {
          row.tokens.push_back(ex.tokens[i]);
          row.positions.push_back(static_cast<int32_t>(i));
          row.segments.push_back(segment);
          row.targets.push_back(i + 1 < len && ex.is_target[i + 1] ? ex.tokens[i + 1] : -1);
        }
        ++segment;
      }));
  return rows;
}

absl::StatusOr<int64_t> CountRows(const std::vector<TokenizedExample>& examples,
                                  const RowOptions& options, const std::string& source) {
  int64_t rows = 0;
  RETURN_IF_ERROR(
      LayOutRows(examples, options, source,
                 [&](const TokenizedExample&, int64_t, bool starts) { rows += starts; }));
  return rows;
}

}  // namespace qlorad
