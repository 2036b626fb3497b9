"""A cheap local-model judge: one forward pass per question, no generation.

``LogitJudge(lm).yes_no(questions)`` compares log P(yes-ish) with log P(no-ish) at the first
answer token of each chat-templated question; ``digit(questions)`` returns the most likely of
the digits 0-3. Deterministic, batched, always answers (no malformed replies), so even a small
model gives a second opinion whose agreement can be measured; a weak judge is a finding.

>>> # from mindscope.judges import LogitJudge; LogitJudge(ms.load()).yes_no(["Is 2 > 1? Answer yes or no."])
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["LogitJudge"]


class LogitJudge:
    """A judge model answering one question per item with a single forward pass: ``yes_no``
    compares log P(yes-ish) with log P(no-ish) at the first answer token; ``digit`` returns the
    most likely of the digits 0-3. Deterministic; ``lm`` is any ``ms.LM`` (chat template used).

    A weak judge is a finding, not a failure: its agreement with the labels is reported."""

    def __init__(self, lm, batch_size: int = 16):
        self.lm, self.batch_size = lm, batch_size
        self.name = f"lm-logit:{getattr(lm, 'name', 'model')}"

    def _ids(self, words: Sequence[str]) -> list[int]:
        out = set()
        for w in words:
            ids = self.lm.tokenizer(w, add_special_tokens=False)["input_ids"]
            if ids:
                out.add(ids[0])
        return sorted(out)

    def _last_logprobs(self, questions: Sequence[str]) -> torch.Tensor:
        prompts = [self.lm.chat([{"role": "user", "content": q}]) for q in questions]
        outs = []
        for a in range(0, len(prompts), self.batch_size):
            b = self.lm.tokenize(prompts[a:a + self.batch_size])
            with torch.no_grad():
                logits = self.lm.forward(b)[:, -1].float()  # (b, V)
            outs.append(logits.log_softmax(-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    def yes_no(self, questions: Sequence[str]) -> list[bool]:
        if not questions:
            return []
        lp = self._last_logprobs(questions)  # (n, V)
        yes, no = self._ids(["Yes", " Yes", "yes", " yes"]), self._ids(["No", " No", "no", " no"])
        return (lp[:, yes].logsumexp(-1) > lp[:, no].logsumexp(-1)).tolist()

    def digit(self, questions: Sequence[str], digits: str = "0123") -> list[int]:
        if not questions:
            return []
        lp = self._last_logprobs(questions)
        ids = [self._ids([d])[0] for d in digits]
        return [int(digits[i]) for i in lp[:, ids].argmax(-1).tolist()]
