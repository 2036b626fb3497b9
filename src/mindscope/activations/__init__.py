"""mindscope.activations: corpus -> token windows -> harvest -> on-disk store -> shuffled reader.

>>> # import mindscope as ms
>>> # from mindscope.activations import harvest, ActivationStore
>>> # lm = ms.load()
>>> # store = harvest(lm, "acts/l15", sites="resid_post.15", n_tokens=2_000_000)  # default corpus
>>> # for x in ActivationStore.open("acts/l15").reader(batch_size=4096):  # (4096, 576) float32
>>> #     ...
"""
from ._corpus import BadRecordError, BadRecords, Corpus, Document, open_corpus
from ._default_corpus import build_default_corpus, corpus_info, default_corpus_dir
from ._harvest import HarvestConfig, auto_batch_size, harvest
from ._store import ActivationStore, CorruptStoreError, StoreReader
from ._windows import ROLES, Window, WindowConfig, iter_windows, keep_mask

__all__ = ["ActivationStore", "StoreReader", "CorruptStoreError", "harvest", "HarvestConfig",
           "auto_batch_size", "Corpus", "Document", "BadRecords", "BadRecordError", "open_corpus",
           "build_default_corpus", "corpus_info", "default_corpus_dir", "WindowConfig", "Window",
           "iter_windows", "keep_mask", "ROLES"]

# Used by other mindscope packages: public here so no package imports another's private module.
from ._store import to_float32
from ._windows import RankEncoder, encode_docs
__all__ += ["to_float32", "encode_docs", "RankEncoder"]
