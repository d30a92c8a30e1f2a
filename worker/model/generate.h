// Text generation with a KV cache (Llama::decode): greedy or sampled, with
// transformers' logits processors in transformers' order — repetition penalty, then
// temperature, top-k and top-p — and its length rule (max_length counts the prompt;
// max_new_tokens, when set, counts only new tokens). Sampling draws from its own
// mt19937_64, so a seed gives the same tokens on every run.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

#include "common/chat_template.h"
#include "common/tokenizer.h"
#include "worker/model/llama.h"

namespace herd::model {

struct SamplingOptions {
  int64_t max_length = 512;      // prompt + new tokens (transformers' max_length)
  int64_t max_new_tokens = 0;    // > 0: new tokens, whatever max_length says
  double temperature = 0.7;      // > 0
  double top_p = 0.95;           // (0, 1]; 1: off
  int64_t top_k = 50;            // transformers' default; 0: off
  double repetition_penalty = 1.15;  // >= 1; 1: off (also applied when greedy, as transformers does)
  bool greedy = false;           // argmax after the repetition penalty
  uint64_t seed = 0;
};

// The next token's scores as transformers' processors leave them, given the tokens so
// far (prompt and generated): float32 [vocab], -inf where a warper removed a token.
torch::Tensor process_logits(const torch::Tensor& logits, const std::vector<int32_t>& so_far,
                             const SamplingOptions& options);

// Tokens after `prompt` (which starts with BOS) until `eos` (not returned), the length
// rule, or `on_token` returning false (the token it was given is kept).
std::vector<int32_t> generate(const Llama& model, const std::vector<int32_t>& prompt, int32_t eos,
                              const SamplingOptions& options, const std::function<bool(int32_t)>& on_token = {});

// A conversation in the seed's prompt style: each earlier turn as training formatted
// it ("### HUMAN:\n{you}\n\n### RESPONSE:\n{reply}</s>\n\n"), then
// "### HUMAN:\n{prompt}\n\n### RESPONSE:\n" (the seed's inference.py prompt). Or,
// with a chat template, the turns as its messages and its generation prompt
// (apply_chat_template(..., add_generation_prompt=True)), and the reply ends at a
// special token (the end of its turn). The oldest turns are dropped when the prompt
// would leave the reply too little room: with max_new_tokens, that many under the
// context window; else a quarter of max_length under max_length (or the context
// window, when smaller).
class Chat {
 public:
  Chat(const Llama& model, const Tokenizer& tokenizer, SamplingOptions options,
       std::shared_ptr<const ChatTemplate> chat_template = nullptr);

  struct Reply {
    std::string text;
    std::vector<int32_t> prompt, tokens;  // the prompt's ids (BOS first) and the reply's
    size_t dropped = 0;                   // earlier turns left out of this prompt
  };
  // The model's reply, streamed to on_text a piece at a time as it is decoded. It
  // ends at EOS, at the length rule, or where the model starts a "### HUMAN:" turn
  // (never shown); with a template, at a special token. The turn joins the history.
  Reply reply(const std::string& prompt, const std::function<void(const std::string&)>& on_text = {});
  void reset() { history_.clear(); }
  std::string format(const std::string& prompt, size_t skip = 0) const;  // skipping the oldest `skip` turns

 private:
  const Llama& model_;
  const Tokenizer& tokenizer_;
  SamplingOptions options_;
  std::shared_ptr<const ChatTemplate> template_;
  std::vector<std::pair<std::string, std::string>> history_;
};

// One turn of `chat` printed to `out`: the reply streamed as it comes, or (json) one
// JSON line when it is done: the prompt's and the reply's token ids, its text (a
// character cut by the length rule shown as U+FFFD) and the turns left out.
Chat::Reply print_turn(Chat& chat, const std::string& prompt, bool json, std::ostream& out);

// The conversation: a prompt a line from `in` until an empty line or its end;
// "/reset" forgets the conversation; `err` is told when the earliest turns no longer
// fit in the prompt.
void converse(Chat& chat, bool json, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace herd::model
