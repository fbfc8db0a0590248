"""Long fuzzing runs over the input boundaries, with the generators of tests/fuzzing.py (the suite runs a few hundred
seeds of the same cases in tests/test_fuzz.py).

    python benchmarks/fuzz.py --cases 10000 --seed 0 [--parsers gguf,hf,package] [--export-every 1]

Cases run in 2 worker processes, each with an address-space limit (RLIMIT_AS, --memory-gib) and a per-case alarm;
the parent also kills a worker that stays on one case past the timeout (a hang in native code) and replaces a worker
that dies (a crash by signal, or memory exhausted), so no case stops the run. Prints, per parser: clean one-line
errors, successes, other exceptions (the first examples, with their seeds to replay), hangs, crashes and exports
that left partial output; writes the summary to ~/.cache/edgekit/results/fuzz-latest.txt (--out benchmarks/results/fuzz-latest.txt
refreshes the repository's).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import Connection, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # tests/fuzzing.py: the generators shared with the suite
from harness import default_out

CRASH = "crash"
KINDS = (fuzzing.CLEAN, fuzzing.OK, fuzzing.OTHER, fuzzing.HANG, CRASH, fuzzing.PARTIAL)
BATCH = 500  # cases per worker process before a fresh one (bounds slow leaks)


def worker(parser: str, seeds: list[int], conn: Connection, memory_gib: float, timeout: float,
           export_every: int) -> None:
    """Run `seeds` of `parser`, reporting ("start", seed) and ("done", seed, kind, detail, what) to the parent."""
    import resource
    import shutil

    os.environ.setdefault("EDGEKIT_QUIET", "1")
    limit = int(memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    devnull = os.open(os.devnull, os.O_WRONLY)  # warnings of gguf-py, tokenizers (Rust) and onnxruntime (C++)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    root = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))
    try:
        bases = fuzzing.Bases.build(root / "bases")
        slots = fuzzing.gguf_slots(bases.gguf)
        for seed in seeds:
            conn.send(("start", seed))
            workdir = root / f"case-{seed}"
            workdir.mkdir()
            result = fuzzing.with_alarm(timeout, lambda s=seed, w=workdir: fuzzing.run_case(
                parser, s, bases, w, export_every, slots))
            outcome, what = result if isinstance(result, tuple) else (result, "?")
            conn.send(("done", seed, outcome.kind, outcome.detail, what))
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Slot:
    """One worker process and the case it is on."""

    def __init__(self, parser: str, seeds: list[int], args: argparse.Namespace):
        self.parser, self.seeds, self.args = parser, list(seeds), args
        self.conn, child = mp.Pipe(duplex=False)
        self.proc = mp.get_context("fork").Process(
            target=worker, args=(parser, self.seeds, child, args.memory_gib, args.timeout, args.export_every),
            daemon=True)
        self.proc.start()
        child.close()
        self.current: int | None = None
        self.since = time.monotonic()
        self.started_first = False

    def remaining_after_current(self) -> list[int]:
        if self.current is None:
            return self.seeds
        return self.seeds[self.seeds.index(self.current) + 1:]


def run(parser: str, seeds: list[int], args: argparse.Namespace) -> tuple[Counter, dict[str, list[str]], float]:
    counts: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    batches = [seeds[i:i + BATCH] for i in range(0, len(seeds), BATCH)]
    slots: list[Slot] = []
    t0 = time.monotonic()

    def record(kind: str, seed: int, detail: str, what: str) -> None:
        counts[kind] += 1
        if kind not in (fuzzing.CLEAN, fuzzing.OK) and len(examples[kind]) < args.examples:
            examples[kind].append(f"seed {seed} [{what[:160]}]: {detail[:300]}")

    while batches or slots:
        while batches and len(slots) < args.workers:
            slots.append(Slot(parser, batches.pop(0), args))
        ready = wait([s.conn for s in slots], timeout=1.0)
        for slot in list(slots):
            if slot.conn in ready:
                try:
                    msg = slot.conn.recv()
                except EOFError:  # the worker died: the case it was on crashed it
                    slot.proc.join()
                    if slot.current is not None:
                        record(CRASH, slot.current, f"worker exit code {slot.proc.exitcode}", "")
                    rest = slot.remaining_after_current()
                    slots.remove(slot)
                    if rest and slot.current is not None:
                        batches.insert(0, rest)
                    continue
                if msg[0] == "start":
                    slot.current, slot.since = msg[1], time.monotonic()
                else:
                    _, seed, kind, detail, what = msg
                    record(kind, seed, detail, what)
                    slot.current = None
                    if seed == slot.seeds[-1]:
                        slot.proc.join(timeout=10)
                        slots.remove(slot)
            elif slot.current is not None and time.monotonic() - slot.since > args.timeout + 10:
                slot.proc.kill()  # stuck where the alarm cannot reach (native code)
                slot.proc.join()
                record(fuzzing.HANG, slot.current, f"killed after {args.timeout + 10:g} s", "")
                rest = slot.remaining_after_current()
                slots.remove(slot)
                if rest:
                    batches.insert(0, rest)
    return counts, examples, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10000, help="cases per parser")
    ap.add_argument("--seed", type=int, default=0, help="first seed (cases are seeds seed .. seed+cases-1)")
    ap.add_argument("--parsers", default=",".join(fuzzing.PARSERS))
    ap.add_argument("--export-every", type=int, default=1,
                    help="export (then load and generate) every Nth case that parses; 1: all of them")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit per worker")
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(f"{default_out('fuzz')}.txt"), help="summary file (default: %(default)s)")
    args = ap.parse_args()

    lines = [(f"edgekit fuzz: {args.cases} cases per parser from seed {args.seed}, {args.workers} workers, "
              f"{args.timeout:g} s and {args.memory_gib:g} GiB per case, export of every {args.export_every} "
              f"case(s) that parse (os.cpu_count()={os.cpu_count()})")]
    print(lines[0], flush=True)
    total_bad = 0
    for parser in args.parsers.split(","):
        counts, examples, seconds = run(parser, list(range(args.seed, args.seed + args.cases)), args)
        bad = sum(counts[k] for k in KINDS if k not in (fuzzing.CLEAN, fuzzing.OK))
        total_bad += bad
        block = [f"{parser:8s} " + "  ".join(f"{k} {counts[k]}" for k in KINDS) +
                 f"  ({seconds:.0f} s, {sum(counts.values()) / seconds:.1f} cases/s)"]
        for kind, items in examples.items():
            block += [f"    {kind}: {item}" for item in items]
        print("\n".join(block), flush=True)
        lines += block
    lines.append(f"anything else than a clean error or success: {total_bad}")
    print(lines[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
    main()
