// Training data: JSONL examples, tokenized with the model's tokenizer, with a loss mask that
// comes from the structure of each example (never from "token == pad"):
//   {"text": T}                        [BOS] T [EOS]        loss on T and EOS
//   {"prompt": P, "completion": C}     [BOS] P C [EOS]      loss on C and EOS
//   {"messages": [{"role", "content"}, ...]}  the chat template below; loss on assistant turns
// Each part is tokenized on its own (SentencePiece puts its word-boundary marker at the start of
// each part), so at inference the same prompt tokenized alone is followed by what was trained.
//
// Chat template (roles system, user, assistant; at least one assistant turn):
//   [BOS] "### System:\n{content}\n\n" "### User:\n{content}\n\n"
//         "### Assistant:\n" {content} [EOS]   ...repeated per turn
// Loss on each assistant {content} and the EOS that ends it; headers and other turns are context.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer.h"

namespace qlorad {

struct TokenizedExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t>
      is_target;     // token i is predicted from tokens[0..i-1] and counts in the loss
  int64_t line = 0;  // 1-based line in the source file
  int64_t num_targets() const;
};

// The longest JSONL line taken as one example (16 MiB: far past any sequence length, short
// of what would let one upload's lines multiply in memory).
inline constexpr size_t kMaxExampleLineBytes = size_t{16} << 20;

// Checks one JSONL line's shape without tokenizing (for upload-time validation). Errors name
// the field; the caller adds the line number.
absl::Status ValidateExampleJson(const std::string& line);

// The bad lines of one JSONL text, gathered so that one error says how many there were and names
// the first kMaxShown: a user fixes a file in one round, not one upload per bad line.
// "line 5: ..." for one; "13 bad lines, the first 10: line 2: ...; line 4: ..." for more.
class BadLines {
 public:
  static constexpr int kMaxShown = 10;
  // Each shown line reads "<source>:<line>: <what>", or "line <line>: <what>" where `source` is
  // empty.
  explicit BadLines(std::string source) : source_(std::move(source)) {}
  // `what` is cut at kMaxWhatBytes: it may quote a field name of any length, and the whole error
  // travels in a gRPC trailer, whose size is bounded.
  void Add(int64_t line, absl::string_view what);
  int64_t count() const { return count_; }
  // OK when no line was added; INVALID_ARGUMENT naming them otherwise.
  absl::Status ToStatus() const;

 private:
  // Ten lines of this fit the 1024 bytes the daemon's errors keep (server/grpc/call.h).
  static constexpr size_t kMaxWhatBytes = 80;
  std::string source_;
  std::string shown_;
  int64_t count_ = 0;
};

// Parses and tokenizes a whole JSONL text. Blank lines are skipped. Bad lines (and examples
// with no target token) fail the whole set, named as BadLines does with `source`. An empty set
// is an error.
absl::StatusOr<std::vector<TokenizedExample>> TokenizeJsonl(const std::string& text,
                                                            const Tokenizer& tokenizer,
                                                            const std::string& source);

// One turn of a chat conversation, as in a dataset's "messages".
struct ChatTurn {
  std::string role;  // CheckChatRole
  std::string content;
};
// "system", "user" or "assistant": the roles a chat dataset and a chat prompt may use.
// OK for those; INVALID_ARGUMENT "messages[i].role must be ..." naming the role otherwise.
absl::Status CheckChatRole(size_t i, absl::string_view role);

// The prompt of a chat conversation for generation, laid out and tokenized as training lays out
// a chat example: everything up to and including the next "### Assistant:\n" header.
// INVALID_ARGUMENT "messages[i].role ..." for another role.
absl::StatusOr<std::vector<int32_t>> ChatPromptTokens(const std::vector<ChatTurn>& turns,
                                                      const Tokenizer& tokenizer);

// One training row of seq_len positions: one example (truncated if longer), or several packed
// ones that never attend to each other. Kept up to the end of its last example: the padding
// that follows is added only in a batch (GatherRows, engine/trainer.h). A row of one short example
// is mostly padding, 16 bytes a position, and a job holds all its rows while it runs.
struct TrainingRow {
  std::vector<int32_t> tokens;     // all four of the same size, at most seq_len
  std::vector<int32_t> positions;  // restart at 0 for each packed example
  std::vector<int32_t> segments;   // example index within the row (-1 marks padding in a batch)
  std::vector<int32_t> targets;    // next target token or -1
  int64_t seq_len = 0;             // the length in a batch; 0: tokens.size() (no padding)
  int64_t length() const { return std::max(seq_len, static_cast<int64_t>(tokens.size())); }
  int64_t num_targets() const;
};

struct RowOptions {
  int64_t seq_len = 512;
  bool packing = false;
};

// Fails naming the lines (BadLines) of the examples that keep no target token within seq_len.
absl::StatusOr<std::vector<TrainingRow>> BuildRows(const std::vector<TokenizedExample>& examples,
                                                   const RowOptions& options,
                                                   const std::string& source);
// How many rows BuildRows would make, with the same checks, without making them (the daemon's
// check of a queued job's data: the rows are 16 bytes a token, for the whole dataset).
absl::StatusOr<int64_t> CountRows(const std::vector<TokenizedExample>& examples,
                                  const RowOptions& options, const std::string& source);

}  // namespace qlorad
