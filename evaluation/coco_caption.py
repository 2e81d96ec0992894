"""Caption metrics with the numbers of coco-caption (``pycocoevalcap``): BLEU-1..4, METEOR, ROUGE-L, CIDEr.

Every remote-sensing captioning paper reports the coco-caption numbers, so these must be the same
numbers: the text goes through the same Stanford PTB tokenizer (the Java jar ``pycocoevalcap`` ships,
same flags, same punctuation filter) and METEOR is the same ``meteor-1.5.jar``. BLEU, ROUGE-L and CIDEr
are re-implemented in plain Python with the reference formulas (``tests/test_eval_caption_metrics.py``
checks them against ``pycocoevalcap`` to 1e-6 on real RS captions), which is faster because

* references and candidates are tokenized by one Java process instead of two,
* the METEOR process starts while the tokenizer runs, and its requests are pipelined instead of one
  blocking round trip per image,
* n-gram counts of the references are computed once and shared by BLEU and CIDEr.

"CIDEr" is coco-caption's CIDEr, which is the CIDEr-D variant of Vedantam et al. (CVPR 2015, Sec. 4):
n = 1..4 TF-IDF vectors with document frequencies over the reference set, clipped hypothesis counts
(``min(hyp, ref)``), a Gaussian length penalty with sigma = 6 and a factor of 10. It counts the length
of a sentence as its number of bigrams, as coco-caption does. That is the number RS papers print under
"CIDEr"; we report it under that name.

SPICE needs Stanford CoreNLP models that ``pycocoevalcap`` downloads on first use; with no network it
cannot run, so asking for it raises a clear error (:data:`SPICE_UNAVAILABLE`).

Example:
    >>> from hqrs.evaluation.coco_caption import score_captions
    >>> refs = {"1": ["a plane is parked at the airport", "an airplane stops near the terminal"]}
    >>> preds = {"1": "a plane is parked near the terminal"}
    >>> scores = score_captions(preds, refs, metrics=("BLEU", "ROUGE_L"))
    >>> sorted(scores.corpus)
    ['BLEU_1', 'BLEU_2', 'BLEU_3', 'BLEU_4', 'ROUGE_L']
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import karpathy_entries

logger = logging.getLogger(__name__)

ALL_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
# Keys of the corpus scores, in the order coco-caption prints them.
SCORE_KEYS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
SPICE_UNAVAILABLE = (
    "SPICE is not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP 3.6.0 models on first use "
    "and this tool runs offline. Leave SPICE out of the metrics (BLEU, METEOR, ROUGE_L, CIDEr)."
)

# coco-caption's PTB tokenizer: flags and the punctuation tokens it drops afterwards.
PTB_FLAGS = ("-preserveLines", "-lowerCase")
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Characters Java's tokenizer treats as line ends; a caption must stay on one line.
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
# JVM settings for both jars (coco-caption runs plain ``java``). They change how the JVM runs, never what
# it computes (Java floating point is strict, so the values are the same to the last bit; the tests check
# it). The single-threaded collector suits a process that builds one large table (METEOR's paraphrases)
# and keeps it: half the memory (~0.57 GB instead of ~1.1 GB) and ~6% less CPU, same wall time on an idle
# machine. C1-only compilation (-XX:TieredStopAtLevel=1) saves another ~10% CPU but is ~2 s slower when a
# core is free, so it is not used (both measured on 5,000 captions, see bench/metrics_speed.py).
JVM_FLAGS = ("-XX:+UseSerialGC",)
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2


def pycocoevalcap_dir() -> Path:
    """Folder of the installed ``pycocoevalcap`` (its jars are the reference implementation)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise OSError(
            "caption metrics need the coco-caption jars from pycocoevalcap: pip install 'pycocoevalcap>=1.2'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise OSError(
            "caption metrics need Java (coco-caption's PTB tokenizer and METEOR are Java programs): "
            "install a JRE >= 8, e.g. 'apt-get install default-jre-headless'"
        )
    return java


# --------------------------------------------------------------------------------------------- input


def validate_captions(
    predictions: Mapping[Any, Any], references: Mapping[Any, Any]
) -> tuple[list[str], list[str], list[list[str]]]:
    """Check ``{id: caption}`` / ``{id: [captions]}`` and return ``(ids, predictions, references)``.

    Ids are compared as strings (JSON object keys are strings). Raises ``ValueError`` naming the id on
    mismatched ids, empty or non-string captions, and text that cannot be encoded as UTF-8.
    """
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise ValueError(
            "predictions must be a mapping {image_id: caption} and references {image_id: [captions]}, got "
            f"{type(predictions).__name__} and {type(references).__name__}"
        )
    preds = {str(k): v for k, v in predictions.items()}
    refs = {str(k): v for k, v in references.items()}
    if len(preds) != len(predictions) or len(refs) != len(references):
        raise ValueError("image ids collide once written as strings (e.g. 1 and '1'); make them unique")
    missing_refs = sorted(set(preds) - set(refs))
    missing_preds = sorted(set(refs) - set(preds))
    if missing_refs or missing_preds:
        parts = []
        if missing_refs:
            parts.append(f"{len(missing_refs)} predicted id(s) have no references, e.g. {missing_refs[:5]}")
        if missing_preds:
            parts.append(f"{len(missing_preds)} reference id(s) have no prediction, e.g. {missing_preds[:5]}")
        raise ValueError("predictions and references must have the same image ids: " + "; ".join(parts))
    if not preds:
        raise ValueError("no captions to score: predictions and references are empty")
    ids = list(refs)
    out_preds: list[str] = []
    out_refs: list[list[str]] = []
    for i in ids:
        out_preds.append(_check_text(preds[i], f"prediction for image id {i!r}"))
        r = refs[i]
        if isinstance(r, str) or not isinstance(r, Sequence):
            raise ValueError(
                f"references for image id {i!r} must be a list of captions, got {type(r).__name__}"
            )
        if not r:
            raise ValueError(f"references for image id {i!r} is an empty list; give at least one caption")
        out_refs.append([_check_text(c, f"reference {j} for image id {i!r}") for j, c in enumerate(r)])
    return ids, out_preds, out_refs


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}: {text!r}")
    if not text.strip():
        raise ValueError(f"{where} is empty; every caption needs some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid Unicode text ({exc.reason} at {exc.start}): {text!r}"
        ) from None
    return text


# ----------------------------------------------------------------------------------------- tokenizer


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """coco-caption's tokenization: Stanford PTBTokenizer (lower-cased), then punctuation tokens dropped.

    One Java process for all sentences; the output has one string (space-joined tokens) per input.
    """
    if not sentences:
        return []
    jar = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise OSError(f"PTB tokenizer jar not found at {str(jar)!r}; reinstall pycocoevalcap")
    text = "\n".join(s.translate(_LINE_BREAKS) for s in sentences)
    with tempfile.TemporaryDirectory(prefix="hqrs-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_bytes(text.encode("utf-8"))
        cmd = [
            _java(),
            *JVM_FLAGS,
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            *PTB_FLAGS,
            str(src),
        ]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise OSError(
            f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = proc.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(sentences):
        raise OSError(
            f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences; a caption probably "
            "holds a character Java reads as a line break"
        )
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in lines]


# ------------------------------------------------------------------------------------------- METEOR


class MeteorScorer:
    """One ``meteor-1.5.jar -stdio`` process (as coco-caption runs it), fed in batches.

    Start it early: the JVM loads its paraphrase table (a few seconds) while other work goes on.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self) -> None:
        folder = pycocoevalcap_dir() / "meteor"
        jar = folder / "meteor-1.5.jar"
        if not jar.is_file():
            raise OSError(f"METEOR jar not found at {str(jar)!r}; reinstall pycocoevalcap")
        self._stderr = tempfile.TemporaryFile()
        # coco-caption's command (java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm) plus JVM_FLAGS
        cmd = [_java(), *JVM_FLAGS, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self._proc = subprocess.Popen(
            cmd, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._lock = threading.Lock()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")[-2000:]
            raise OSError(f"METEOR process ended unexpectedly (exit {self._proc.poll()}): {err}")
        return line.decode("utf-8").strip()

    def _write_lines(self, lines: Iterable[str], errors: list[BaseException]) -> None:
        try:  # one large write: the GIL is released for the whole transfer, not taken back per line
            self._proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))
            self._proc.stdin.flush()
        except BaseException as exc:  # reported by finish()
            errors.append(exc)

    def start(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Send the items and let Java score them in the background; :meth:`finish` collects the result.

        Python can compute the other metrics meanwhile (METEOR is the slow one).
        """
        score_lines = [
            " ||| ".join(("SCORE", " ||| ".join(refs), hyp.replace("|||", "").replace("  ", " ")))
            for hyp, refs in zip(hypotheses, references)
        ]
        self._lock.acquire()
        self._n = len(score_lines)
        self._errors: list[BaseException] = []
        self._stats: list[str] = []
        self._writer = threading.Thread(
            target=self._write_lines, args=(score_lines, self._errors), daemon=True
        )
        self._reader = threading.Thread(target=self._read_stats, daemon=True)
        self._writer.start()
        self._reader.start()

    def _read_stats(self) -> None:
        # Read in chunks, not lines: a thread that wakes per line would wait for the GIL each time while
        # the main thread computes BLEU / CIDEr.
        try:
            fd = self._proc.stdout.fileno()
            buf = bytearray()
            while buf.count(b"\n") < self._n:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._stats.extend(buf.decode("utf-8").split("\n")[: self._n])
                    self._readline()  # raises with METEOR's stderr
                buf += chunk
            lines = buf.decode("utf-8").split("\n")
            if len(lines) > self._n + 1 or lines[self._n]:
                raise OSError("METEOR wrote more lines than it was sent")
            self._stats.extend(line.strip() for line in lines[: self._n])
        except BaseException as exc:  # re-raised by finish()
            self._errors.append(exc)

    def finish(self) -> tuple[float, list[float]]:
        """Corpus METEOR (from the summed statistics, as METEOR's EVAL does) and per-item scores."""
        try:
            self._writer.join()
            self._reader.join()
            if self._errors:
                err = self._errors[0]
                raise err if isinstance(err, OSError) else OSError(f"METEOR failed: {err}")
            self._proc.stdin.write(("EVAL ||| " + " ||| ".join(self._stats) + "\n").encode("utf-8"))
            self._proc.stdin.flush()
            per_item = [float(self._readline()) for _ in range(self._n)]
            corpus = float(self._readline())
        finally:
            self._lock.release()
        return corpus, per_item

    def score(
        self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, list[float]]:
        """Corpus METEOR and per-item scores for tokenized hypotheses and references."""
        self.start(hypotheses, references)
        return self.finish()


# ------------------------------------------------------------------------------------ BLEU / CIDEr


def _ngram_counts(tokens: Sequence[str], n: int = 4) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            g = tuple(tokens[i : i + k])
            counts[g] = counts.get(g, 0) + 1
    return counts


def _brevity_penalty(test_len: float, ref_len: float) -> float:
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)  # coco-caption's smoothing constants
    return math.exp(1 - 1 / ratio) if ratio < 1 else 1.0


def bleu(
    hyp_counts: Sequence[Mapping[tuple, int]],
    hyp_lens: Sequence[int],
    ref_counts: Sequence[Sequence[Mapping[tuple, int]]],
    ref_lens: Sequence[Sequence[int]],
    n: int = 4,
) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n (closest reference length, coco-caption's smoothing constants) and per-item."""
    small, tiny = 1e-9, 1e-15
    total_guess = [0] * n
    total_correct = [0] * n
    total_test = 0
    total_ref = 0
    per_item: list[list[float]] = [[] for _ in range(n)]
    for counts, testlen, refs, rlens in zip(hyp_counts, hyp_lens, ref_counts, ref_lens):
        maxcounts: dict[tuple, int] = {}
        for rc in refs:
            for g, c in rc.items():
                if c > maxcounts.get(g, 0):
                    maxcounts[g] = c
        reflen = min((abs(rl - testlen), rl) for rl in rlens)[1]
        guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for g, c in counts.items():
            m = maxcounts.get(g, 0)
            correct[len(g) - 1] += c if c < m else m
        total_test += testlen
        total_ref += reflen
        b = 1.0
        bp = _brevity_penalty(testlen, reflen)
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            b *= (correct[k] + tiny) / (guess[k] + small)
            per_item[k].append(b ** (1.0 / (k + 1)) * bp)
    corpus = []
    b = 1.0
    bp = _brevity_penalty(total_test, total_ref)
    for k in range(n):
        b *= (total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(b ** (1.0 / (k + 1)) * bp)
    return corpus, per_item


def cider_d(
    hyp_counts: Sequence[Mapping[tuple, int]],
    ref_counts: Sequence[Sequence[Mapping[tuple, int]]],
    n: int = 4,
    sigma: float = CIDER_SIGMA,
) -> tuple[float, list[float]]:
    """coco-caption's CIDEr (= CIDEr-D): corpus mean and per-item scores."""
    df: Counter = Counter()
    for refs in ref_counts:
        df.update({g for rc in refs for g in rc})
    ref_len = math.log(float(len(ref_counts)))

    def to_vec(counts: Mapping[tuple, int]) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            w = float(tf) * (ref_len - math.log(max(1.0, df.get(g, 0.0))))
            vec[k][g] = w
            norm[k] += w * w
            if k == 1:  # coco-caption counts a sentence's length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    two_sigma2 = 2 * sigma**2
    scores = []
    for counts, refs in zip(hyp_counts, ref_counts):
        vh, nh, lh = to_vec(counts)
        total = [0.0] * n
        for rc in refs:
            vr, nr, lr = to_vec(rc)
            penalty = math.exp(-(float(lh - lr) ** 2) / two_sigma2)
            for k in range(n):
                ref_k = vr[k]
                val = 0.0
                for g, w in vh[k].items():
                    r = ref_k.get(g, 0.0)
                    val += (w if w < r else r) * r
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


# -------------------------------------------------------------------------------------------- ROUGE


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else (prev[j + 1] if prev[j + 1] > cur[j] else cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = ROUGE_BETA):
    """coco-caption's ROUGE-L: per item, F-measure of the best LCS precision and recall over references."""
    scores = []
    b2 = beta**2
    for hyp, refs in zip(hypotheses, references):
        tc = hyp.split(" ")  # coco-caption splits on single spaces
        prec_max = rec_max = 0.0
        for ref in refs:
            tr = ref.split(" ")
            lcs = _lcs(tr, tc)
            prec_max = max(prec_max, lcs / len(tc))
            rec_max = max(rec_max, lcs / len(tr))
        if prec_max != 0 and rec_max != 0:
            scores.append(((1 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores), scores


# --------------------------------------------------------------------------------------------- all


@dataclass
class CaptionScores:
    """Corpus scores (``BLEU_1`` … ``CIDEr``) and per-image scores in the order of ``ids``."""

    ids: list[str]
    corpus: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)


def normalize_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical metric family names; ``None`` → all. Raises on SPICE and unknown names."""
    if metrics is None:
        return ALL_METRICS
    aliases = {m.lower().replace("-", "_"): m for m in ALL_METRICS}
    aliases.update({"rouge": "ROUGE_L", "rougel": "ROUGE_L", "cider_d": "CIDEr", "ciderd": "CIDEr"})
    aliases.update({f"bleu_{k}": "BLEU" for k in range(1, 5)})
    out = []
    for m in metrics:
        key = str(m).strip().lower().replace("-", "_")
        if key == "spice":
            raise ValueError(SPICE_UNAVAILABLE)
        if key not in aliases:
            raise ValueError(f"unknown caption metric {m!r}; choose from {', '.join(ALL_METRICS)}")
        if aliases[key] not in out:
            out.append(aliases[key])
    if not out:
        raise ValueError(f"no caption metric requested; choose from {', '.join(ALL_METRICS)}")
    return tuple(m for m in ALL_METRICS if m in out)


def score_captions(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    metrics: Iterable[str] | None = None,
) -> CaptionScores:
    """Score ``{image_id: caption}`` against ``{image_id: [captions]}`` the way coco-caption does."""
    wanted = normalize_metrics(metrics)
    ids, preds, refs = validate_captions(predictions, references)
    meteor = MeteorScorer() if "METEOR" in wanted else None  # JVM warms up during tokenization
    try:
        flat = [c for r in refs for c in r]
        tokens = ptb_tokenize(preds + flat)
        hyp_tok = tokens[: len(preds)]
        ref_tok: list[list[str]] = []
        pos = len(preds)
        for r in refs:
            ref_tok.append(tokens[pos : pos + len(r)])
            pos += len(r)
        corpus: dict[str, float] = {}
        per_item: dict[str, list[float]] = {}
        if meteor is not None:  # Java scores METEOR while Python computes the rest
            meteor.start(hyp_tok, ref_tok)
        if "BLEU" in wanted or "CIDEr" in wanted:
            hyp_words = [h.split() for h in hyp_tok]
            hyp_counts = [_ngram_counts(w) for w in hyp_words]
            ref_words = [[r.split() for r in rs] for rs in ref_tok]
            ref_counts = [[_ngram_counts(w) for w in rs] for rs in ref_words]
        if "BLEU" in wanted:
            values, items = bleu(
                hyp_counts,
                [len(w) for w in hyp_words],
                ref_counts,
                [[len(w) for w in rs] for rs in ref_words],
            )
            for k in range(4):
                corpus[f"BLEU_{k + 1}"] = values[k]
                per_item[f"BLEU_{k + 1}"] = items[k]
        if "ROUGE_L" in wanted:
            corpus["ROUGE_L"], per_item["ROUGE_L"] = rouge_l(hyp_tok, ref_tok)
        if "CIDEr" in wanted:
            corpus["CIDEr"], per_item["CIDEr"] = cider_d(hyp_counts, ref_counts)
        if meteor is not None:
            corpus["METEOR"], per_item["METEOR"] = meteor.finish()
    finally:
        if meteor is not None:
            meteor.close()
    order = [k for k in SCORE_KEYS if k in corpus]
    return CaptionScores(
        ids=ids, corpus={k: corpus[k] for k in order}, per_item={k: per_item[k] for k in order}
    )


def pycocoevalcap_scores(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    metrics: Iterable[str] | None = None,
) -> CaptionScores:
    """The same scores computed by ``pycocoevalcap`` itself, the way its ``COCOEvalCap`` does (two PTB
    tokenizer runs, then each scorer in turn): the reference of the parity tests and the baseline of
    ``bench/metrics_speed.py``. Slower than :func:`score_captions`; its tokenizer writes a temporary file
    into the installed package's folder."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wanted = normalize_metrics(metrics)
    ids, preds, refs = validate_captions(predictions, references)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in r] for i, r in zip(ids, refs)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in zip(ids, preds)})
    corpus: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    scorers = {"METEOR": Meteor, "ROUGE_L": Rouge, "CIDEr": Cider}
    for name in wanted:
        if name == "BLEU":
            values, items = Bleu(4).compute_score(gts, res, verbose=0)
            for k in range(4):
                corpus[f"BLEU_{k + 1}"], per_item[f"BLEU_{k + 1}"] = values[k], list(items[k])
        else:
            value, items = scorers[name]().compute_score(gts, res)
            corpus[name], per_item[name] = float(value), [float(x) for x in items]
    return CaptionScores(ids=list(gts), corpus=corpus, per_item=per_item)  # pycocoevalcap's own order


def karpathy_references(karpathy: Mapping[str, Any], split: str | None = "test") -> dict[str, list[str]]:
    """``{filename: [raw captions]}`` of a Karpathy-style ``{"images": [...]}`` file (one split or all)."""
    return {e.filename: e.captions for e in karpathy_entries(karpathy, split)}


__all__ = [
    "ALL_METRICS",
    "SCORE_KEYS",
    "CaptionScores",
    "MeteorScorer",
    "bleu",
    "cider_d",
    "karpathy_references",
    "normalize_metrics",
    "ptb_tokenize",
    "pycocoevalcap_scores",
    "rouge_l",
    "score_captions",
    "validate_captions",
]
