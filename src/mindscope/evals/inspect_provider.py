"""An Inspect AI model provider: ``mindscope/<model>``, interventions as model args.

Any Inspect eval then runs on a steered / capped / ablated mindscope model::

    inspect eval inspect_evals/gsm8k --model mindscope/smollm2-135m-instruct \\
        -M steer=vec.safetensors@resid_post.15:4 -M cap=axis.safetensors@resid_post.20:-2

Python: ``get_model("mindscope/smollm2-135m-instruct", interventions=[ms.Add(...)])`` or
``lm=<an ms.LM>`` to reuse a loaded model. Model args: ``steer``, ``cap``, ``ablate`` (spec
strings or lists of them, as in ``mindscope eval``), ``interventions`` (objects), ``lm``,
``dtype``. Generation is greedy unless the Inspect config sets a temperature; ``max_tokens``
defaults to 256.

Needs ``inspect-ai`` (optional). Inspect finds the provider through the ``inspect_ai`` entry
point of the mindscope package; without it, ``import mindscope.evals.inspect_provider`` first.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from inspect_ai.model import ChatMessage, GenerateConfig, ModelAPI, ModelOutput, modelapi
from inspect_ai.tool import ToolChoice, ToolInfo

from ..core import spec_interventions


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


class MindscopeAPI(ModelAPI):
    """Runs a local ``ms.LM`` through ``lm.generate(..., interventions=[...])``."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        super().__init__(model_name, base_url, api_key, [], config)
        import mindscope as ms

        lm = model_args.pop("lm", None)
        self.lm = lm if lm is not None else ms.load(model_name, dtype=model_args.pop("dtype", "float32"))
        self.interventions = list(model_args.pop("interventions", []) or [])
        self.interventions += spec_interventions(self.lm, _as_list(model_args.pop("steer", None)),
                                                  _as_list(model_args.pop("cap", None)),
                                                  _as_list(model_args.pop("ablate", None)))
        if model_args:
            raise ValueError(f"mindscope provider: unknown model args {sorted(model_args)}; use "
                             "steer, cap, ablate, interventions, lm, dtype")
        self._lock = threading.Lock()  # one generation at a time on the shared model

    def max_connections(self) -> int:
        return 1

    def _generate(self, messages: list[dict], config: GenerateConfig) -> str:
        with self._lock:
            out = self.lm.generate([messages], max_new_tokens=config.max_tokens or 256, chat=True,
                                   temperature=config.temperature or 0.0,
                                   top_p=config.top_p if config.top_p is not None else 1.0,
                                   seed=config.seed if config.seed is not None else 0,
                                   interventions=self.interventions, progress=False)
        return out[0].text

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo],
                       tool_choice: ToolChoice, config: GenerateConfig) -> ModelOutput:
        messages = [{"role": m.role if m.role != "tool" else "user", "content": m.text} for m in input]
        text = await asyncio.to_thread(self._generate, messages, config)
        return ModelOutput.from_content(model=self.model_name, content=text)


@modelapi(name="mindscope")
def mindscope_provider() -> type[ModelAPI]:
    return MindscopeAPI
