#include "worker/model/generate.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace herd::model {

torch::Tensor process_logits(const torch::Tensor& logits, const std::vector<int32_t>& so_far,
                             const SamplingOptions& o) {
  auto scores = logits.to(torch::kFloat32).reshape({-1}).cpu().clone();
  float* s = scores.data_ptr<float>();
  const int64_t vocab = scores.numel();
  if (o.repetition_penalty != 1.0) {  // each token seen so far, once
    std::vector<bool> seen(static_cast<size_t>(vocab), false);
    const auto p = static_cast<float>(o.repetition_penalty);
    for (int32_t id : so_far) {
      if (id < 0 || id >= vocab || seen[static_cast<size_t>(id)]) continue;
      seen[static_cast<size_t>(id)] = true;
      s[id] = s[id] < 0 ? s[id] * p : s[id] / p;
    }
  }
  if (o.greedy) return scores;
  scores = scores / static_cast<float>(o.temperature);
  const float removed = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < vocab) {
    const auto kth = std::get<0>(torch::topk(scores, o.top_k)).index({o.top_k - 1});
    scores = scores.masked_fill(scores < kth, removed);
  }
  if (o.top_p < 1.0) {  // transformers' TopPLogitsWarper: ascending, drop the low tail of mass 1 - top_p
    auto [sorted, index] = torch::sort(scores, /*dim=*/0, /*descending=*/false);
    auto cumulative = sorted.softmax(0).cumsum(0);
    auto drop = cumulative <= (1.0 - o.top_p);
    drop.index_put_({vocab - 1}, false);  // the most likely token always stays
    scores = scores.scatter(0, index, sorted.masked_fill(drop, removed));
  }
  return scores;
}

std::vector<int32_t> generate(const Llama& model, const std::vector<int32_t>& prompt, int32_t eos,
                              const SamplingOptions& o, const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) throw std::invalid_argument("generate: an empty prompt");
  if (!o.greedy && !(o.temperature > 0)) throw std::invalid_argument("generate: temperature must be > 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) throw std::invalid_argument("generate: top_p must be in (0, 1]");
  const int64_t room = o.max_new_tokens > 0 ? o.max_new_tokens : o.max_length - static_cast<int64_t>(prompt.size());
  std::vector<int32_t> so_far = prompt, out;
  if (room <= 0) return out;
  model.check_token_ids(prompt);
  std::mt19937_64 rng(o.seed);
  Llama::KVCache cache;
  auto ids = torch::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), torch::kInt64).view({1, -1});
  for (int64_t n = 0; n < room; ++n) {
    const auto scores = process_logits(model.decode(ids, cache), so_far, o);
    int32_t next = 0;
    if (o.greedy) {
      next = static_cast<int32_t>(scores.argmax().item<int64_t>());
    } else {
      const auto probs = scores.softmax(0).to(torch::kFloat64).contiguous();
      const double* p = probs.data_ptr<double>();
      const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      double sum = 0;
      next = -1;
      for (int64_t i = 0; i < probs.numel(); ++i) {
        if (p[i] <= 0) continue;
        next = static_cast<int32_t>(i);  // the last token with mass, should rounding leave u above the sum
        sum += p[i];
        if (u < sum) break;
      }
    }
    if (next == eos) break;
    out.push_back(next);
    so_far.push_back(next);
    if (on_token && !on_token(next)) break;
    ids = torch::tensor({static_cast<int64_t>(next)}, torch::kInt64).view({1, 1});
  }
  return out;
}

namespace {
const std::string kUser = "### HUMAN:\n", kResponse = "### RESPONSE:\n", kStop = "### HUMAN:";

// How much of `text` may be shown: all but a tail that could start the stop string,
// and the whitespace before it (a reply that stops there ends without it).
size_t showable(const std::string& text) {
  size_t end = text.size();
  for (size_t keep = std::min(text.size(), kStop.size() - 1); keep > 0; --keep) {
    if (text.compare(text.size() - keep, keep, kStop, 0, keep) == 0) {
      end = text.size() - keep;
      break;
    }
  }
  while (end > 0 && (text[end - 1] == '\n' || text[end - 1] == ' ')) --end;
  return end;
}
}  // namespace

Chat::Chat(const Llama& model, const Tokenizer& tokenizer, SamplingOptions options,
           std::shared_ptr<const ChatTemplate> chat_template)
    : model_(model), tokenizer_(tokenizer), options_(options), template_(std::move(chat_template)) {}

std::string Chat::format(const std::string& prompt, size_t skip) const {
  if (template_) {
    std::vector<ChatMessage> messages;
    for (size_t i = skip; i < history_.size(); ++i) {
      messages.push_back({"user", history_[i].first});
      messages.push_back({"assistant", history_[i].second});
    }
    messages.push_back({"user", prompt});
    return template_->render(messages, /*add_generation_prompt=*/true).text;
  }
  std::string text;
  const std::string eos = tokenizer_.eos_piece();
  for (size_t i = skip; i < history_.size(); ++i) {
    text += kUser + history_[i].first + "\n\n" + kResponse + history_[i].second + eos + "\n\n";
  }
  return text + kUser + prompt + "\n\n" + kResponse;
}

Chat::Reply Chat::reply(const std::string& prompt, const std::function<void(const std::string&)>& on_text) {
  const auto& o = options_;
  const int64_t context = model_.config().max_position_embeddings;
  const int64_t cap = o.max_new_tokens > 0 ? context : std::min(o.max_length, context);
  const int64_t room = o.max_new_tokens > 0 ? o.max_new_tokens : std::max<int64_t>(1, o.max_length / 4);
  Reply r;
  for (;; ++r.dropped) {
    r.prompt = tokenizer_.encode(format(prompt, r.dropped), /*add_special=*/!template_);
    if (static_cast<int64_t>(r.prompt.size()) + room <= cap || r.dropped == history_.size()) break;
  }
  if (static_cast<int64_t>(r.prompt.size()) >= cap) {
    throw std::invalid_argument(fmt::format("the prompt is {} tokens, and at most {} fit ({})", r.prompt.size(),
                                            cap - 1,
                                            o.max_new_tokens > 0 ? "the context window" : "--max-length"));
  }
  SamplingOptions run = o;
  if (o.max_new_tokens <= 0) run.max_length = cap;
  size_t shown = 0;  // bytes of the reply handed to on_text
  std::vector<int32_t> so_far;
  generate(model_, r.prompt, tokenizer_.eos_id(), run, [&](int32_t token) {
    so_far.push_back(token);
    r.text = tokenizer_.decode(so_far);
    if (template_) {  // the template's turns end at a special token; the text leaves it out
      if (on_text && r.text.size() > shown) on_text(r.text.substr(shown));
      shown = r.text.size();
      return !tokenizer_.special(token);
    }
    const size_t stop = r.text.find(kStop);
    if (stop != std::string::npos) {
      r.text.resize(stop);
      while (!r.text.empty() && (r.text.back() == '\n' || r.text.back() == ' ')) r.text.pop_back();
    }
    const size_t show = stop != std::string::npos ? r.text.size() : showable(r.text);
    if (on_text && show > shown) on_text(r.text.substr(shown, show - shown));
    shown = std::max(shown, show);
    return stop == std::string::npos;
  });
  r.tokens = so_far;  // every token generated: those of a "### HUMAN:" the model began too
  if (on_text && shown < r.text.size()) on_text(r.text.substr(shown));
  history_.emplace_back(prompt, r.text);
  return r;
}

Chat::Reply print_turn(Chat& chat, const std::string& prompt, bool json, std::ostream& out) {
  const auto r = chat.reply(prompt, json ? std::function<void(const std::string&)>()
                                         : [&out](const std::string& text) { out << text << std::flush; });
  if (json) {
    const nlohmann::json doc = {
        {"prompt_tokens", r.prompt}, {"tokens", r.tokens}, {"text", r.text}, {"dropped_turns", r.dropped}};
    out << doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  out << "\n" << std::flush;
  return r;
}

void converse(Chat& chat, bool json, std::istream& in, std::ostream& out, std::ostream& err) {
  for (std::string line;;) {
    out << "> " << std::flush;
    if (!std::getline(in, line) || line.empty()) return;
    if (line == "/reset") {
      chat.reset();
      continue;
    }
    const auto r = print_turn(chat, line, json, out);
    if (r.dropped > 0) {
      err << fmt::format("herd chat: {} of the earliest turns left out of the prompt (the context is full)\n",
                         r.dropped);
    }
  }
}

}  // namespace herd::model
