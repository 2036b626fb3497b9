"""Old spellings of the protocol commands, kept as hidden aliases for one release.

Before the protocol commands were generated from each protocol's ``Config`` (``_protocols``),
each protocol had a hand-written group (``mindscope introspect detection``, ``onpolicy gap``,
``persona run --part drift``, ...). Those spellings still work: ``rewrite`` turns an old command
line into the new one before the generated command parses it, printing one note per old
spelling. Nothing here defines an option: the options come from the Config alone.
"""
from __future__ import annotations

from pathlib import Path

from ._common import note_renamed as note

# old group name -> the protocol command
GROUPS = {"introspect": "introspection"}

_INTRO = ("detection", "thoughts", "prefill", "control", "mechanisms")
_ONPOLICY = ("gap", "surprise", "intent", "verbal")
# old sub-commands: the leading word -> the options it stands for ([] = the Config's default)
SUBCOMMANDS: dict[str, dict[str, list[str]]] = {
    "introspection": {"run": [], "all": [], **{p: ["--protocols", p] for p in _INTRO}},
    "onpolicy": {"all": [], **{p: ["--protocols", p] for p in _ONPOLICY}},
    "binding": {"run": []},
    "emotions": {"run": []},
    "persona": {"run": []},
}

# old option spelling -> new, per protocol; "*" for every protocol command
OPTIONS: dict[str, dict[str, str]] = {
    "*": {"--grader": "--judge"},
    "introspection": {"--baseline": "--baseline-words"},
    "emotions": {"--part": "--parts", "--emotion": "--emotions", "-e": "--emotions",
                 "--stories": "--story-source", "--steer": "--steer-emotions"},
    "persona": {"--part": "--parts"},
    # `--control` is now the positive control (a flag); with a value it is the control probe
    "binding": {"--control": "--control-probe"},
}
_NEEDS_VALUE = {"--control"}  # renamed only when a value follows (else the new flag)
# options that took a file of one word per line; now a list, or @FILE
_FILE_LISTS = {"introspection": {"--concepts", "--baseline-words"}}


def rewrite(name: str, args: list[str], path: str = "mindscope") -> list[str]:
    """``args`` of protocol command ``name`` with every old spelling replaced by the new one."""
    args = list(args)
    subs = SUBCOMMANDS.get(name, {})
    lead: list[str] = []
    words = []
    while args and args[0] in subs:
        words.append(args[0])
        lead += subs[args.pop(0)]
    if words:
        note(f"`{path} {' '.join(words)}`", f"`{' '.join([path, *lead])}`")
    table = {**OPTIONS["*"], **OPTIONS.get(name, {})}
    files = _FILE_LISTS.get(name, set())
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        flag, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        nxt = args[i + 1] if i + 1 < len(args) else None
        if flag in table and (flag not in _NEEDS_VALUE or eq
                              or (nxt is not None and not nxt.startswith("-"))):
            note(flag, table[flag])
            flag = table[flag]
        if flag in files:
            v = val if eq else nxt
            if v is not None and not v.startswith("@") and Path(v).is_file():
                note(f"{flag} FILE", f"{flag} @FILE")
                if eq:
                    val = "@" + val
                else:
                    out += [flag, "@" + v]
                    i += 2
                    continue
        out.append(flag + eq + val if eq else flag)
        i += 1
    return lead + out
