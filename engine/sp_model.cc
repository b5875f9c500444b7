#include "engine/sp_model.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status_macros.h"
#include "engine/utf8.h"

namespace qlorad {
namespace {

constexpr char kSpaceMark[] = "\xE2\x96\x81";  // U+2581

// A minimal protobuf wire-format reader (the engine links no protobuf library).
class Wire {
 public:
  explicit Wire(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  absl::StatusOr<uint64_t> Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return absl::InvalidArgumentError("truncated varint");
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    return absl::InvalidArgumentError("varint too long");
  }
  // Reads the next field; `bytes` is set for length-delimited and fixed fields.
  absl::Status Next(int* field, int* wire, uint64_t* value, std::string_view* bytes) {
    ASSIGN_OR_RETURN(uint64_t tag, Varint());
    *field = static_cast<int>(tag >> 3);
    *wire = static_cast<int>(tag & 7);
    switch (*wire) {
      case 0: {
        ASSIGN_OR_RETURN(*value, Varint());
        return absl::OkStatus();
      }
      case 1:
      case 5: {
        const size_t n = *wire == 1 ? 8 : 4;
        if (pos_ + n > data_.size()) return absl::InvalidArgumentError("truncated fixed field");
        *bytes = data_.substr(pos_, n);
        pos_ += n;
        return absl::OkStatus();
      }
      case 2: {
        ASSIGN_OR_RETURN(uint64_t len, Varint());
        if (len > data_.size() - pos_)
          return absl::InvalidArgumentError("truncated length-delimited field");
        *bytes = data_.substr(pos_, len);
        pos_ += len;
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(absl::StrCat("unsupported wire type ", *wire));
    }
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

// Length in bytes of the UTF-8 character starting with `c` (1 for invalid lead bytes).
size_t Utf8Length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

// The byte a "<0xHH>" piece stands for, or -1 when `piece` is not spelled so.
int BytePieceValue(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (const char c : piece.substr(3, 2)) {
    value *= 16;
    if (c >= '0' && c <= '9') {
      value += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

// Length of a well-formed UTF-8 character at s[i], or 0 when the bytes there are malformed
// (libsentencepiece then replaces one byte).
size_t ValidUtf8Length(std::string_view s, size_t i) {
  const Utf8Char c = Utf8CharAt(s, i);
  return c.valid ? c.length : 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Parse(
    std::string_view proto) {
  auto m = std::unique_ptr<SentencePieceModel>(new SentencePieceModel());
  int model_type = 1;  // proto default: UNIGRAM
  std::string normalizer_name;
  bool has_charsmap = false;
  Wire top(proto);
  while (!top.done()) {
    int field, wire;
    uint64_t v = 0;
    std::string_view bytes;
    RETURN_IF_ERROR(top.Next(&field, &wire, &v, &bytes));
    if (field == 1 && wire == 2) {  // SentencePiece
      VocabPiece p;
      Wire w(bytes);
      while (!w.done()) {
        int f, wt;
        uint64_t pv = 0;
        std::string_view pb;
        RETURN_IF_ERROR(w.Next(&f, &wt, &pv, &pb));
        if (f == 1 && wt == 2) p.piece = std::string(pb);
        if (f == 2 && wt == 5) std::memcpy(&p.score, pb.data(), 4);
        if (f == 3 && wt == 0) p.type = static_cast<PieceType>(pv);
      }
      m->pieces_.push_back(std::move(p));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      Wire w(bytes);
      while (!w.done()) {
        int f, wt;
        uint64_t tv = 0;
        std::string_view tb;
        RETURN_IF_ERROR(w.Next(&f, &wt, &tv, &tb));
        if (wt != 0) continue;
        if (f == 3) model_type = static_cast<int>(tv);
        if (f == 35) m->byte_fallback_ = tv != 0;
        if (f == 40) m->unk_id_ = static_cast<int32_t>(tv);
        if (f == 41) m->bos_id_ = static_cast<int32_t>(tv);
        if (f == 42) m->eos_id_ = static_cast<int32_t>(tv);
      }
      Wire again(bytes);  // string fields
      while (!again.done()) {
        int f, wt;
        uint64_t tv = 0;
        std::string_view tb;
        RETURN_IF_ERROR(again.Next(&f, &wt, &tv, &tb));
        if (f == 44 && wt == 2) m->unk_surface_ = std::string(tb);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      Wire w(bytes);
      while (!w.done()) {
        int f, wt;
        uint64_t nv = 0;
        std::string_view nb;
        RETURN_IF_ERROR(w.Next(&f, &wt, &nv, &nb));
        if (f == 1 && wt == 2) normalizer_name = std::string(nb);
        if (f == 2 && wt == 2) has_charsmap = !nb.empty();
        if (f == 3 && wt == 0) m->add_dummy_prefix_ = nv != 0;
        if (f == 4 && wt == 0) m->remove_extra_whitespaces_ = nv != 0;
        if (f == 5 && wt == 0) m->escape_whitespaces_ = nv != 0;
      }
    }
  }
  if (m->pieces_.empty()) return absl::InvalidArgumentError("SentencePiece model has no pieces");
  if (model_type != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("only BPE SentencePiece models are supported (model_type ", model_type, ")"));
  }
  if (has_charsmap || (!normalizer_name.empty() && normalizer_name != "identity")) {
    return absl::InvalidArgumentError(
        absl::StrCat("only the identity normalizer is supported, not '", normalizer_name, "'"));
  }
  const int32_t n = m->size();
  for (int32_t id : {m->unk_id_, m->bos_id_, m->eos_id_}) {
    if (id < 0 || id >= n)  // -1 (a disabled token) too: generation and training need all three
      return absl::InvalidArgumentError(
          absl::StrCat("special token id ", id, " is outside the vocabulary of ", n));
  }
  std::fill(std::begin(m->byte_ids_), std::end(m->byte_ids_), -1);
  for (int32_t id = 0; id < n; ++id) {
    const VocabPiece& p = m->pieces_[id];
    const int type = static_cast<int>(p.type);
    if (type < static_cast<int>(PieceType::kNormal) || type > static_cast<int>(PieceType::kByte)) {
      return absl::InvalidArgumentError(absl::StrCat("piece ", id, " has unknown type ", type));
    }
    if (p.type == PieceType::kByte) {
      const int byte = BytePieceValue(p.piece);
      if (byte < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("byte piece ", id, " is not spelled <0xHH> (two hex digits)"));
      }
      m->byte_ids_[byte] = id;
      continue;
    }
    // Pieces become generated text, which the API carries in UTF-8 string fields.
    if (!IsUtf8(p.piece))
      return absl::InvalidArgumentError(absl::StrCat("piece ", id, " is not UTF-8"));
    if (p.type == PieceType::kNormal || p.type == PieceType::kUserDefined)
      m->mergeable_.emplace(p.piece, id);
    if (p.type == PieceType::kUserDefined) m->user_defined_.push_back(p.piece);
  }
  std::sort(m->user_defined_.begin(), m->user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return m;
}

char SentencePieceModel::ByteOf(int32_t id) const {
  return static_cast<char>(BytePieceValue(pieces_[id].piece));
}

std::string SentencePieceModel::Normalize(std::string_view text) const {
  // Malformed UTF-8: each bad byte becomes U+FFFD, as libsentencepiece does.
  std::string s;
  s.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t len = ValidUtf8Length(text, i);
    if (len == 0) {
      s += "\xEF\xBF\xBD";
      ++i;
    } else {
      s.append(text.substr(i, len));
      i += len;
    }
  }
  if (remove_extra_whitespaces_) {
    std::string collapsed;
    bool prev_space = true;  // drops leading spaces
    for (char c : s) {
      if (c == ' ') {
        if (!prev_space) collapsed.push_back(' ');
        prev_space = true;
      } else {
        collapsed.push_back(c);
        prev_space = false;
      }
    }
    while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    s = std::move(collapsed);
  }
  if (s.empty()) return s;
  if (add_dummy_prefix_) s.insert(s.begin(), ' ');
  if (!escape_whitespaces_) return s;
  std::string out;
  for (char c : s) {
    if (c == ' ') {
      out += kSpaceMark;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::vector<int32_t> SentencePieceModel::Encode(std::string_view text) const {
  const std::string norm = Normalize(text);
  // Symbols: characters, or user-defined pieces matched whole.
  struct Symbol {
    size_t begin, len;
    int prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < norm.size();) {
    size_t len = 0;
    for (const std::string& u : user_defined_) {
      if (norm.compare(i, u.size(), u) == 0) {
        len = u.size();
        break;
      }
    }
    if (len == 0) len = std::min(Utf8Length(static_cast<unsigned char>(norm[i])), norm.size() - i);
    sym.push_back({i, len, static_cast<int>(sym.size()) - 1, static_cast<int>(sym.size()) + 1});
    i += len;
  }
  if (!sym.empty()) sym.back().next = -1;
  // Candidate merges, best score first, leftmost first on ties.
  struct Candidate {
    float score;
    int left, right;
    size_t size;  // merged length, to detect stale entries
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto try_pair = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t size = sym[left].len + sym[right].len;
    auto it = mergeable_.find(norm.substr(sym[left].begin, size));
    if (it == mergeable_.end()) return;
    queue.push({pieces_[it->second].score, left, right, size});
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i)
    try_pair(static_cast<int>(i), static_cast<int>(i + 1));
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& l = sym[c.left];
    Symbol& r = sym[c.right];
    if (l.len == 0 || r.len == 0 || l.next != c.right || l.len + r.len != c.size)
      continue;  // stale
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    r.len = 0;
    try_pair(l.prev, c.left);
    try_pair(c.left, l.next);
  }
  std::vector<int32_t> ids;
  for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    const std::string piece = norm.substr(sym[i].begin, sym[i].len);
    auto it = mergeable_.find(piece);
    if (it != mergeable_.end()) {
      ids.push_back(it->second);
    } else if (byte_fallback_) {
      for (unsigned char b : piece) ids.push_back(byte_ids_[b] >= 0 ? byte_ids_[b] : unk_id_);
    } else {
      ids.push_back(unk_id_);
    }
  }
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int32_t>& ids) const {
  // As libsentencepiece: runs of byte pieces become their bytes (each malformed byte U+FFFD);
  // control pieces nothing; pieces written to a still-empty text lose their leading U+2581
  // (the dummy prefix); U+2581 elsewhere becomes a space.
  std::string text, bytes;
  auto flush_bytes = [&] {
    for (size_t i = 0; i < bytes.size();) {
      const size_t len = ValidUtf8Length(bytes, i);
      if (len == 0) {
        text += "\xEF\xBF\xBD";
        ++i;
      } else {
        text.append(bytes, i, len);
        i += len;
      }
    }
    bytes.clear();
  };
  // With remove_extra_whitespaces every leading U+2581 goes; otherwise only the dummy prefix.
  bool strip = add_dummy_prefix_ || remove_extra_whitespaces_;
  for (int32_t id : ids) {
    if (id < 0 || id >= size()) continue;
    const VocabPiece& p = pieces_[id];
    if (p.type == PieceType::kByte) {
      bytes.push_back(ByteOf(id));
      continue;
    }
    flush_bytes();
    if (p.type == PieceType::kControl) continue;
    if (p.type == PieceType::kUnknown) {
      text += unk_surface_;
      continue;
    }
    std::string_view piece = p.piece;
    if (strip && text.empty() && piece.substr(0, 3) == kSpaceMark) {
      piece.remove_prefix(3);
      if (!remove_extra_whitespaces_) strip = false;
    }
    for (size_t i = 0; i < piece.size(); ++i) {
      if (piece.substr(i, 3) == kSpaceMark) {
        text.push_back(' ');
        i += 2;
      } else {
        text.push_back(piece[i]);
      }
    }
  }
  flush_bytes();
  return text;
}

}  // namespace qlorad
