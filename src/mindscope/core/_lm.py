"""``LM``: a loaded causal LM + tokenizer + its named sites.

>>> # lm = ms.load("smollm2-135m-instruct")
>>> # cap = lm.capture(["Hello world"], sites=["resid_post.15"], positions="last")
>>> # cap["resid_post.15"].shape  -> (1, 576)
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch

from ._chat import ChatPrompt, chat_format, render_chat
from ._device import to_module
from ._families import Family, family_for
from ._hooks import Dispatcher, masked_apply
from ._interventions import Intervention
from ._positions import RowMeta, Run
from ._sites import Site
from ._vision import ImagePrompt, image_token_id
from ._vision import add_placeholders as add_image_placeholders
from ._vision import encode as encode_image_prompt
from ._vision import model_inputs as vision_inputs
from ._vision import rope_positions
from . import _sites

log = logging.getLogger(__name__)
KINDS = _sites.RESID
Prompt = Union[str, ChatPrompt, list]


@dataclass
class Batch:
    """Left-padded token ids + mask, and per-row text metadata for span positions."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    meta: list[RowMeta] | None = None
    extras: list[dict] | None = None
    """Per-row model inputs besides the tokens (images: ``pixel_values``...), see _vision."""

    def model_inputs(self) -> dict:
        """Extra keyword inputs for the model call (images), batched for this padding."""
        return vision_inputs(self.extras, self.attention_mask)

    @property
    def pad(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) == 0).sum(-1)  # (B,)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def right_padded(self) -> bool:
        """True if some row has padding after a real token."""
        m = self.attention_mask.long()
        return bool((m[:, 1:] < m[:, :-1]).any())

    def left_padded(self) -> "Batch":
        """This batch with every row's real tokens moved to the right end (left padding), the
        layout mindscope's loops assume; unchanged if already so. Logged when it moves rows."""
        if not self.right_padded:
            return self
        m = self.attention_mask.bool()
        order = torch.sort((~m).long() * -1, dim=1, stable=True).indices  # pads first, in order
        log.info("right-padded batch: moved the padding to the left of each row")
        return Batch(self.input_ids.gather(1, order), self.attention_mask.gather(1, order),
                     self.meta, self.extras)

    def slice(self, a: int, b: int) -> "Batch":
        ids, m = self.input_ids[a:b], self.attention_mask[a:b]
        keep = int(m.sum(0).nonzero().min()) if bool(m.any()) else 0  # drop all-pad columns
        return Batch(ids[:, keep:], m[:, keep:], None if self.meta is None else self.meta[a:b],
                     None if self.extras is None else self.extras[a:b])


class LM:
    """A causal LM with named sites. Build with ``ms.load(spec)`` or ``LM.from_hf(model, tok)``."""

    def __init__(self, model, tokenizer, name: str = "model", processor=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.processor = processor
        """A transformers processor for image + text prompts (vision-language models)."""
        self.image_token_id = image_token_id(model)
        self.family = model.config.model_type
        cfg = getattr(model.config, "text_config", None) or model.config  # VLMs: the text part
        self.text_config = cfg
        self.family_spec: Family = family_for(self.family, model)
        self.n_layers = int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        self.vocab_size = int(cfg.vocab_size)
        self.n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self._site_cache: dict[str, Site] = {}
        self.parallel = self.family_spec.parallel and bool(getattr(cfg, "use_parallel_residual", True))
        self._hooks = Dispatcher(self)
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        for p in model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_hf(cls, model, tokenizer, name: str | None = None, processor=None) -> "LM":
        return cls(model, tokenizer, name or getattr(model.config, "_name_or_path", "") or "model",
                   processor)

    def __repr__(self) -> str:
        return (f"LM({self.name!r}, family={self.family}, layers={self.n_layers}, "
                f"d_model={self.d_model}, dtype={self.dtype}, device={self.device})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- sites -------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        """Every layer site name of this model (``module:`` sites not listed)."""
        kinds = [k for k in _sites.KINDS if k not in self._missing_kinds()]
        return ["embed"] + [f"{k}.{i}" for i in range(self.n_layers) for k in kinds] + ["final_norm"]

    def _missing_kinds(self) -> dict[str, str]:
        fam, why = self.family_spec, {}
        if self.parallel:
            why["resid_mid"] = "resid_mid does not exist in parallel-residual blocks"
        if fam.moe:
            why["mlp_post"] = "a mixture-of-experts block has no single neuron layer; use expert_out.L"
        else:
            why["router"] = why["expert_out"] = f"{self.family} is not a mixture-of-experts family"
        return why

    def site(self, name: str) -> Site:
        """Parse and validate one site name (TransformerLens names are translated) -> Site."""
        if isinstance(name, Site):
            return name
        s = self._site_cache.get(name)
        if s is None:
            why = self._missing_kinds()
            kinds = tuple(k for k in _sites.KINDS if k not in why)
            s = _sites.parse(name, self.n_layers, self.n_heads, kinds, self.model, why)
            if s.heads and s.kind in ("k", "v"):
                _sites.check_heads(name, s.heads, self.n_kv_heads)
            self._site_cache[name] = s
        return s

    def parse_site(self, site: str) -> tuple[str, int | None]:
        """(kind, layer) of a site name; see ``site`` for the parsed value."""
        s = self.site(site)
        return s.kind, s.layer

    def expand_sites(self, spec: str | Sequence[str], heads=None) -> list[Site]:
        """'resid_post.*', 'resid_post.10:20', 'resid_post.3,mlp_out.4' or a list -> parsed
        Site values (each a str). ``heads`` selects heads of every headed site."""
        items = [spec] if isinstance(spec, str) else list(spec)
        items = [s.strip() for it in items
                 for s in ([it] if isinstance(it, Site) else re.split(r",(?![^\[]*\])", it))
                 if s.strip()]
        out: list[Site] = []
        for s in items:
            m = re.match(r"^(\w+)\.(-?\d*):(-?\d*)$", s)
            if m:
                idx = range(self.n_layers)[slice(int(m.group(2)) if m.group(2) else None,
                                                 int(m.group(3)) if m.group(3) else None)]
                names = [f"{m.group(1)}.{i}" for i in idx]
            elif any(c in s for c in "*?") and not s.startswith("module:"):
                names = fnmatch.filter(self.sites, s)
                names.sort(key=self.sites.index)
            else:
                names = [s]
            if not names:
                raise ValueError(f"site pattern {s!r} matches nothing; valid sites look like "
                                 f"resid_post.0..resid_post.{self.n_layers - 1}")
            for n in names:
                site = self.site(n)
                if heads is not None and site.kind in _sites.HEADED:
                    hs = (heads,) if isinstance(heads, int) else tuple(heads)
                    _sites.check_heads(site, hs, self.n_kv_heads if site.kind in ("k", "v")
                                       else self.n_heads)
                    site = site.with_heads(hs)
                if site not in out:
                    out.append(site)
        return out

    def site_depth(self, site: str) -> float:
        """Order of sites along the forward pass (used for early stopping)."""
        s = self.site(site)
        if s.kind == "embed":
            return -1
        if s.kind == "module":  # inside block L: L + 0.95, else after the last block
            m = re.match(re.escape(self.family_spec.layers) + r"\.(\d+)\.", s.path + ".")
            return int(m.group(1)) + 0.95 if m else self.n_layers
        if s.kind == "final_norm":
            return self.n_layers
        return s.layer + _sites.DEPTH[s.kind]

    def module(self, path: str) -> torch.nn.Module:
        return self.model.get_submodule(path)

    def block(self, layer: int) -> torch.nn.Module:
        return self.module(self.family_spec.layers)[layer]

    def block_part(self, layer: int, path: str) -> torch.nn.Module:
        return self.block(layer).get_submodule(path)

    # ---- tokens ------------------------------------------------------------------------
    @property
    def chat_format(self) -> str:
        """How ``chat`` renders conversations: ``"chat template"``, or ``"plain transcript (no
        chat template)"`` for a tokenizer without one (base models; see ``render_chat``)."""
        return chat_format(self.tokenizer)

    def chat(self, messages, prefill: str | None = None, add_generation_prompt: bool = True,
             system: str | None = None) -> ChatPrompt:
        return render_chat(self.tokenizer, messages, prefill, add_generation_prompt, system)

    def _texts(self, prompts, chat: bool) -> tuple[list[str], list[list], list]:
        if isinstance(prompts, (str, ChatPrompt, ImagePrompt)):
            prompts = [prompts]
        texts, roles, images = [], [], []
        for p in prompts:
            img = p if isinstance(p, ImagePrompt) else None
            images.append(img)
            if img is not None:
                p = img.text
                if isinstance(p, str) and self.processor is not None:
                    p = add_image_placeholders(self, p, len(img.images))
            if isinstance(p, list):  # a conversation
                p = self.chat(p)
            elif isinstance(p, str) and chat:
                if self._templated(p):  # already rendered: wrapping it again would nest turns
                    log.warning("a prompt already holds the chat template's markers (%r); it is "
                                "used as written, not templated again (pass chat=False)",
                                p[:40])
                else:
                    p = self.chat([{"role": "user", "content": p}])
            if isinstance(p, ChatPrompt):
                texts.append(p.text)
                roles.append(p.spans)
            elif isinstance(p, str):
                texts.append(p)
                roles.append([])
            else:
                raise TypeError(f"a prompt must be str, ChatPrompt, ImagePrompt or a message list; "
                                f"got {type(p)}")
        return texts, roles, images

    def _templated(self, text: str) -> bool:
        """Whether ``text`` already holds this chat template's user-turn marker."""
        marker = getattr(self, "_turn_marker", None)
        if marker is None:
            try:
                probe = self.chat([{"role": "user", "content": "\x00"}]).text
                head = probe.split("\x00")[0]
                bos = self.tokenizer.bos_token or ""
                head = head[len(bos):] if bos and head.startswith(bos) else head
                # the last line of the scaffolding before the user's text, e.g. '<|im_start|>user'
                marker = head.rstrip("\n").split("\n")[-1].strip() if head.strip() else ""
                if not any(c in marker for c in "<[|"):  # plain words ('User:') prove nothing
                    marker = ""
            except Exception:  # noqa: BLE001 - no chat template: nothing to detect
                marker = ""
            self._turn_marker = marker
        return bool(marker) and marker in text

    def tokenize(self, prompts, chat: bool = False, add_special_tokens: bool | None = None,
                 max_length: int | None = None) -> Batch:
        """Tokenize and LEFT-pad. Chat prompts are rendered with the chat template (whose text
        already holds any BOS); plain text gets the tokenizer's default special tokens."""
        if isinstance(prompts, Batch):
            return prompts.left_padded()
        texts, roles, images = self._texts(prompts, chat)
        if not texts:
            raise ValueError("no prompts given")
        is_chat = [bool(r) or chat for r in roles]
        rows, meta, extras = [], [], []
        for text, r, c, img in zip(texts, roles, is_chat, images):
            if img is not None:  # through the processor (it adds the image tokens)
                src = img if isinstance(img.text, ChatPrompt) or not r else ImagePrompt(
                    ChatPrompt(text, r), img.images)
                ids, m, ex = encode_image_prompt(self, src, text, r)
                rows.append(ids)
                meta.append(m)
                extras.append(ex)
                continue
            extras.append({})
            special = (not c) if add_special_tokens is None else add_special_tokens
            enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
            ids, offs = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
            if max_length is not None:
                ids, offs = ids[:max_length], offs[:max_length]
            if not ids:
                raise ValueError(f"prompt {text[:40]!r} tokenizes to nothing")
            rows.append(ids)
            meta.append(RowMeta(text=text, offsets=offs, roles=list(r)))
        T = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
        return Batch(ids, mask, meta, extras if any(extras) else None)

    # ---- forward -----------------------------------------------------------------------
    @contextlib.contextmanager
    def run_context(self, batch: Batch, row_offset: int = 0):
        """Bind ``batch`` to every model call inside the block, for code that drives the model
        itself (``lm.call`` or ``lm.model(...)``, e.g. a KV-cached continuation). Interventions
        and captures then resolve positions (spans, roles, masks: in the coordinates of
        ``batch``) and per-row values (row ``i`` of the batch is row ``row_offset + i`` of the
        values) against it, also on calls that run only the last columns on a KV cache.
        ``forward``, ``capture`` and ``generate`` do this themselves. Yields the ``Run``; the
        previous binding is restored on exit, even on error."""
        prev = self._hooks.run, self._hooks._auto_run
        self._hooks.run = Run(batch.pad, batch.input_ids.shape[1], batch.meta, row_offset,
                              batch.attention_mask, image=None if self.image_token_id is None
                              else batch.input_ids == self.image_token_id)
        self._hooks._auto_run = False
        try:
            yield self._hooks.run
        finally:
            self._hooks.run, self._hooks._auto_run = prev

    @staticmethod
    def position_ids(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) so padding shifts nothing

    def call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw):
        """One call of the Hugging Face model on a left-padded batch, with position ids that
        padding does not shift; returns the HF output (``.logits``, ``.past_key_values``).
        ``input_ids`` may be the last columns of ``attention_mask`` only (a continuation: pass
        the KV cache of the earlier columns in ``kw``). Inputs move to the model's device;
        gradients are not switched off. Wrap in ``run_context`` so interventions see the batch.

        >>> # with torch.no_grad(), lm.run_context(b):
        >>> #     out = lm.call(b.input_ids, b.attention_mask, use_cache=True)"""
        n, T = input_ids.shape[1], attention_mask.shape[1]
        run = self._hooks.run
        mm = rope_positions(self.model, input_ids.to(self.device), attention_mask, kw) \
            if n == T else None
        if mm is not None:  # images on a multimodal-rotary model: (3, B, T) positions
            pos, delta = mm
            if run is not None:
                run.rope_delta = delta.cpu()  # for the tokens that continue this prompt
        else:
            pos = self.position_ids(attention_mask)[:, T - n:]
            delta = getattr(run, "rope_delta", None) if n < T else None
            if delta is not None:
                pos = pos + delta
        return self.model(input_ids=input_ids.to(self.device),
                          attention_mask=attention_mask.to(self.device),
                          position_ids=pos.to(self.device), **kw)

    _running = run_context  # the names core's own modules use
    _call = call

    @torch.no_grad()
    def forward(self, prompts, chat: bool = False, row_offset: int = 0) -> torch.Tensor:
        """Logits (B, T, V) of a left-padded batch; padding never changes real rows."""
        b = self.tokenize(prompts, chat=chat)
        with self.run_context(b, row_offset):
            return self.call(b.input_ids, b.attention_mask, use_cache=False,
                             **b.model_inputs()).logits

    def loss(self, prompts, chat: bool = False, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy over real tokens. ``reduction='none'`` -> (B, T-1) with 0 on
        padding."""
        b = self.tokenize(prompts, chat=chat)
        logits = self.forward(b).float()
        tgt, m = b.input_ids[:, 1:], b.attention_mask[:, 1:] * b.attention_mask[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1).to(logits.device),
            reduction="none").view(tgt.shape).cpu() * m
        return ce if reduction == "none" else ce.sum() / m.sum().clamp(min=1)

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding: (…, d) -> (…, V) logits."""
        head = self.model.get_output_embeddings()
        norm = self.module(self.family_spec.final_norm)
        x = norm(to_module(h.to(self.dtype), norm))      # each part on its own device (sharded)
        return head(to_module(x, head))

    # ---- interventions -----------------------------------------------------------------
    @contextlib.contextmanager
    def intervene(self, *interventions: Intervention | Iterable[Intervention]):
        """Apply interventions inside the block; every hook is removed on exit, even on error."""
        flat: list[Intervention] = []
        for iv in interventions:
            flat.extend(iv if isinstance(iv, (list, tuple)) else [iv])
        keys = []
        try:
            for iv in flat:
                if not isinstance(iv, Intervention):
                    raise TypeError(f"not an intervention: {iv!r}")
                for site in self.expand_sites(iv.site):
                    keys.append((site, self._hooks.add(site, self._handler(iv), priority=0)))
            yield self
        finally:
            for site, k in keys:
                self._hooks.remove(site, k)

    @staticmethod
    def _handler(iv: Intervention):
        def fn(h, run):
            if getattr(iv, "full", False):
                return iv.apply_full(h, run.mask(iv.positions))
            return masked_apply(h, run.mask(iv.positions), iv.apply_rows, run.row_offset)
        return fn

    def remove_all_hooks(self) -> None:
        """Emergency reset: drop every mindscope hook on this model."""
        self._hooks.remove_all()

    from ._capture import capture, monitor, record  # noqa: E402  (methods defined in their own module)
    from ._generate import generate  # noqa: E402
