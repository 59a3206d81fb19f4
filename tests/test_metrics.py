"""Tests for maskkv.eval.metrics (LongBench v1 metrics and task scoring).

Expected values are worked out by hand in the comments. Optional cross-checks
against PyPI ``rouge==1.0.1`` and ``fuzzywuzzy`` run only when those packages
are importable.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from maskkv.eval import metrics as M
from maskkv.eval.metrics import (
    FIRST_LINE_TASKS,
    LONGBENCH_E_TASKS,
    TASK_METRICS,
    classification_score,
    code_sim_score,
    count_score,
    fuzz_ratio,
    length_bucket,
    normalize_answer,
    qa_f1_score,
    retrieval_score,
    rouge_score,
    sample_scores,
    score_sample,
    score_task,
    score_task_e,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "longbench"

# ROUGE-L F of two identical texts: P = R = 1, F = 2 * (1 / (2 + 1e-8)).
IDENTICAL = 2.0 * ((1.0 * 1.0) / (1.0 + 1.0 + 1e-8))


def rouge_f(p: float, r: float) -> float:
    """The rouge 1.0.1 F formula, for hand-computed expectations."""
    return 2.0 * ((p * r) / (p + r + 1e-8))


def words(k: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(k))


# --------------------------------------------------------------------------- #
# normalize_answer / qa_f1_score
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # lower -> "the cat's hat." ; punct -> "the cats hat" ; article -> " cats hat"
        ("The Cat's hat.", "cats hat"),
        # "the." -> "the" (dot removed first) -> article removed -> ""
        ("the.", ""),
        # only ASCII punctuation goes: hyphen removed, curly quotes and em dash stay
        ("Well-known \u201cquote\u201d \u2014 a test", "wellknown \u201cquote\u201d \u2014 test"),
        # articles are whole words only
        ("Another anthem", "another anthem"),
        ("  many \t\n spaces ", "many spaces"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_qa_f1_score_hand_cases() -> None:
    # [quick, brown, fox] vs [quick, brown, dog]: same=2, P=R=2/3 -> F=2/3
    assert qa_f1_score("The quick brown fox", "quick brown dog") == pytest.approx(2 / 3)
    # multiset overlap: [x,x,y] vs [x,y,y] -> min(2,1)+min(1,2) = 2, P=R=2/3
    assert qa_f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    # case and punctuation are normalised away
    assert qa_f1_score("Paris", "paris.") == 1.0
    # P = 1/2 (paris, london), R = 1 -> F = 2*0.5*1/1.5 = 2/3
    assert qa_f1_score("Paris London", "Paris") == pytest.approx(2 / 3)
    # both normalise to "" -> 0 (not 1 as in SQuAD)
    assert qa_f1_score("", "") == 0.0
    assert qa_f1_score("The", "a") == 0.0
    assert qa_f1_score("dog", "cat") == 0.0


# --------------------------------------------------------------------------- #
# rouge_score (ROUGE-L F of rouge 1.0.1)
# --------------------------------------------------------------------------- #


def test_rouge_identical_is_not_one() -> None:
    assert rouge_score("the cat sat", "the cat sat") == IDENTICAL
    assert IDENTICAL != 1.0 and IDENTICAL == pytest.approx(0.999999995, abs=1e-12)


def test_rouge_hand_cases() -> None:
    # "Hello. " -> sentences ["Hello", ""] -> words {Hello, ""}: n = 2; ref {Hello}: m = 1.
    # U = {Hello}: P = 1/2, R = 1 -> F = 0.6667
    assert rouge_score("Hello. ", "Hello") == rouge_f(0.5, 1.0)
    assert rouge_score("Hello. ", "Hello") == pytest.approx(2 / 3, abs=1e-7)
    # every "." cuts: "3.5 million" -> ["3", "5 million"], n = |{3, 5, million}| = 3;
    # ref "35 million": m = 2; U = {million}: P = 1/3, R = 1/2 -> F = 0.4
    assert rouge_score("3.5 million", "35 million") == rouge_f(1 / 3, 1 / 2)
    assert rouge_score("3.5 million", "35 million") == pytest.approx(0.4, abs=1e-7)
    # unique words: hyp {the, cat} (n = 2) and the LCS covers both -> identical score
    assert rouge_score("the the the cat", "the cat") == IDENTICAL
    # ... while QA F1 counts the repeats: P = 2/4, R = 1 ("the" is removed there, so use "x")
    assert qa_f1_score("x x x cat", "x cat") == pytest.approx(2 * 0.5 / 1.5)
    # case-sensitive: only "cat" matches, P = R = 1/2
    assert rouge_score("The cat", "the cat") == rouge_f(0.5, 0.5)
    # newlines/tabs collapse inside a sentence
    assert rouge_score("the\n\ncat\tsat", "the cat sat") == IDENTICAL


def test_rouge_no_sentence_scores_zero() -> None:
    # rouge 1.0.1 raises ValueError for an empty sentence list; LongBench maps it to 0.0
    for empty in ("", ".", "..."):
        assert rouge_score(empty, "the cat") == 0.0
        assert rouge_score("the cat", empty) == 0.0
    # " " is one (blank) sentence whose only word is "": both sides {""} -> "identical"
    assert rouge_score(" ", " ") == IDENTICAL
    # " . " -> two blank sentences, still the single word "" on the hypothesis side
    assert rouge_score(" . ", " ") == IDENTICAL
    assert rouge_score(" ", "cat") == 0.0


def test_rouge_backtrace_tie_break() -> None:
    # ref "a b. b" -> sentences [a b], [b]; hyp "b a" -> one sentence. n = m = 2.
    # LCS([a,b], [b,a]) has length 1. From (2,2): b != a; T[1][2] = 1 is not > T[2][1] = 1,
    # so the trace moves left and takes "b" (not "a"). Second pair adds "b" again.
    # U = {b}: P = R = 1/2. (Taking "a" would give U = {a, b} and F ~ 1.)
    assert rouge_score("b a", "a b. b") == rouge_f(0.5, 0.5)


def test_rouge_recursion_cutoff() -> None:
    # Identical period-free sentences: the back-trace takes one diagonal step per word.
    assert rouge_score(words(990), words(990)) == IDENTICAL
    assert rouge_score(words(991), words(991)) == 0.0
    assert rouge_score(words(991), words(991), rouge_recursion_cutoff=None) == IDENTICAL
    # Mixed path: ref "z", hyp "z a0..a989" (990 words): 989 left moves + 1 diagonal = 990 steps.
    # U = {z}: P = 1/990, R = 1.
    hyp = "z " + words(989, "a")
    assert rouge_score(hyp, "z") == rouge_f(1 / 990, 1.0)
    # one more word: 991 steps -> RecursionError upstream -> 0.0
    hyp = "z " + words(990, "a")
    assert rouge_score(hyp, "z") == 0.0
    assert rouge_score(hyp, "z", rouge_recursion_cutoff=None) == rouge_f(1 / 991, 1.0)
    # A pair with no common word still walks len(hyp sentence) steps (always left).
    # hyp sentences [z], [a0..a990]; ref [z]: the second pair has 991 steps.
    assert rouge_score("z. " + words(991, "a"), "z") == 0.0
    assert rouge_score("z. " + words(991, "a"), "z", rouge_recursion_cutoff=None) == rouge_f(
        1 / 992, 1.0
    )
    # A pair that cannot add a new word must still be traced for the cutoff:
    # hyp [z], [z a0..a989] (991 words); the second pair's LCS {z} is already in U.
    assert rouge_score("z. z " + words(990, "a"), "z") == 0.0


def _dp_lcs_backtrace(x: list[str], y: list[str]) -> tuple[list[str], int]:
    """Plain O(nm) rouge 1.0.1 back-trace, independent of the bit-parallel one."""
    n, m = len(x), len(y)
    t = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(t[i - 1][j], t[i][j - 1])
    i, j, out, steps = n, m, [], 0
    while i and j:
        steps += 1
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif t[i - 1][j] > t[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out, steps


def test_bit_parallel_lcs_matches_plain_dp() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        vocab = [f"v{k}" for k in range(rng.randint(1, 8))]
        x = [rng.choice(vocab) for _ in range(rng.randint(1, 40))]
        y = [rng.choice(vocab) for _ in range(rng.randint(1, 40))]
        rows = M._lcs_rows(x, len(y), M._match_masks(y))
        assert M._lcs_backtrace(x, y, rows) == _dp_lcs_backtrace(x, y)
        assert M._lcs_length(x, y) == len(_dp_lcs_backtrace(x, y)[0])


def _random_text(rng: random.Random, vocab: list[str], k: int) -> str:
    pieces = [rng.choice(vocab) for _ in range(k)]
    seps = [" ", " ", " ", ". ", "  ", "\n", ".", " . "]
    return "".join(p + rng.choice(seps) for p in pieces)[: rng.randint(0, 10 * k + 1)]


def test_rouge_matches_rouge_package_random() -> None:
    rouge = pytest.importorskip("rouge")
    ref_impl = rouge.Rouge()
    rng = random.Random(7)
    vocab = ["the", "The", "cat", "sat", "on", "mat", "3", "5", "", "a", "Mat"]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 5000))
    try:
        for _ in range(300):
            hyp = _random_text(rng, vocab, rng.randint(0, 30))
            gold = _random_text(rng, vocab, rng.randint(0, 30))
            try:
                expected = ref_impl.get_scores([hyp], [gold], avg=True)["rouge-l"]["f"]
            except Exception:
                expected = 0.0
            assert rouge_score(hyp, gold, rouge_recursion_cutoff=None) == expected, (hyp, gold)
    finally:
        sys.setrecursionlimit(old)


_OFFICIAL_STACK_SCRIPT = """
import json, sys
from rouge import Rouge

def rouge_score(prediction, ground_truth, **kwargs):
    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:
        return 0.0
    return scores["rouge-l"]["f"]

def scorer(pairs):
    out = []
    for prediction, ground_truth in pairs:
        out.append(rouge_score(prediction, ground_truth))
    return out

if __name__ == "__main__":
    print(json.dumps(scorer(json.load(sys.stdin))))
"""


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11),
    reason="the 991-step cutoff was measured under CPython 3.11",
)
def test_rouge_cutoff_matches_package_under_official_call_stack(tmp_path: Path) -> None:
    pytest.importorskip("rouge")
    # Same frame depth as LongBench/eval.py: module -> scorer -> rouge_score -> rouge internals.
    script = tmp_path / "official_stack.py"
    script.write_text(_OFFICIAL_STACK_SCRIPT)
    pairs = [
        ("z " + words(989, "a"), "z"),  # 990 steps: passes
        ("z " + words(990, "a"), "z"),  # 991 steps: RecursionError -> 0.0
        ("z. " + words(991, "a"), "z"),  # no-match pair of 991 steps
        ("z. z " + words(990, "a"), "z"),  # already-counted pair of 991 steps
        # ref w0..w5 vs hyp w0..w4 b0..b983: 984 left + 1 up + 5 diagonal = 990 steps
        (words(5) + " " + words(984, "b"), words(6)),
        (words(5) + " " + words(985, "b"), words(6)),  # 991 steps
    ]
    done = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = json.loads(done.stdout)
    assert [rouge_score(p, g) for p, g in pairs] == expected
    assert [score > 0 for score in expected] == [True, False, False, False, True, False]


# --------------------------------------------------------------------------- #
# classification / retrieval / count
# --------------------------------------------------------------------------- #


def test_classification_score() -> None:
    classes = ["Animal", "Food", "Location"]
    # two labels named, gold among them -> 1/2
    assert classification_score("Animal or Food", "Food", all_classes=classes) == 0.5
    assert classification_score("Food", "Food", all_classes=classes) == 1.0
    assert classification_score("Location", "Food", all_classes=classes) == 0.0
    # case-sensitive substring test
    assert classification_score("food", "Food", all_classes=classes) == 0.0
    # Pruning quirk: found = [A, AB, B, ABC]. Visit 0: "A" is a proper substring of the gold
    # -> removed, list [AB, B, ABC]; visit 1: "B" -> removed, list [AB, ABC]; visit 2: end.
    # "AB" slid into a visited slot and survives: 1/len([AB, ABC]) = 0.5 (a clean prune gives 1.0).
    assert classification_score("ABC", "ABC", all_classes=["A", "AB", "B", "ABC"]) == 0.5
    with pytest.raises(ValueError, match="all_classes"):
        classification_score("Food", "Food")


def test_retrieval_and_count_scores() -> None:
    # numbers [3, 12], one equals 3 -> 1/2
    assert retrieval_score("Paragraph 3 and 12", "Paragraph 3") == 0.5
    assert retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    # string equality: "03" != "3"
    assert retrieval_score("Paragraph 03", "Paragraph 3") == 0.0
    assert retrieval_score("no number", "Paragraph 3") == 0.0
    with pytest.raises(ValueError, match="Paragraph"):
        retrieval_score("3", "3")
    # numbers ["11", "1", "11", "12"] -> 2/4
    assert count_score("11.\n\nParagraphs 1, 11, and 12 are duplicates", "11") == 0.5
    assert count_score("012", "12") == 0.0
    assert count_score("There are 7 unique paragraphs.", "7") == 1.0
    assert count_score("", "7") == 0.0


# --------------------------------------------------------------------------- #
# fuzz_ratio / code_sim_score
# --------------------------------------------------------------------------- #


def test_fuzz_ratio_guards_and_rounding() -> None:
    for backend in M.FUZZ_BACKENDS:
        assert fuzz_ratio("abc", "abc", backend) == 100
        assert fuzz_ratio("", "", backend) == 100  # equality is checked before emptiness
        assert fuzz_ratio("", "a", backend) == 0
        assert fuzz_ratio(None, "a", backend) == 0
    # kitten/sitting: LCS "ittn" = 4, L = 13 -> 100 * 8/13 = 61.5 -> 62 (difflib finds the same 4)
    assert fuzz_ratio("kitten", "sitting") == 62
    assert fuzz_ratio("kitten", "sitting", "difflib") == 62
    # round half to even: L = 16, LCS 1 -> 12.5 -> 12; LCS 3 -> 37.5 -> 38
    assert fuzz_ratio("abcdefgh", "hijklmno") == 12
    assert fuzz_ratio("abcdefgh", "abcxxxxx") == 38
    with pytest.raises(ValueError, match="backend"):
        fuzz_ratio("a", "b", "nope")  # type: ignore[arg-type]


def test_fuzz_backends_differ() -> None:
    # Indel/Levenshtein: LCS("cabc", "ac") = "ac" = 2, L = 6 -> 66.7 -> 67.
    # difflib: the first longest block is "c" (a[0] with b[1]); nothing can match on either
    # side of it, so only 1 matched character: 2/6 -> 33.
    assert fuzz_ratio("cabc", "ac") == 67
    assert fuzz_ratio("cabc", "ac", "difflib") == 33
    assert code_sim_score("cabc", "ac") == 0.67
    assert code_sim_score("cabc", "ac", fuzz_backend="difflib") == 0.33


def test_fuzz_ratio_pure_python_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    pairs = [
        ("".join(rng.choice("ab c()\u00e9") for _ in range(rng.randint(0, 30))),
         "".join(rng.choice("ab c()\u00e9") for _ in range(rng.randint(0, 30))))
        for _ in range(200)
    ]
    with_default = [fuzz_ratio(a, b) for a, b in pairs]
    monkeypatch.setattr(M, "_Indel", None)
    assert [fuzz_ratio(a, b) for a, b in pairs] == with_default


def _random_code_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    alphabet = "abcde ()=._\t\u00fc"
    out = []
    for _ in range(n):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.3:
            b = a[: len(a) // 2] + b[len(b) // 2 :]
        out.append((a, b))
    out.append(("x" * 250, "x" * 120 + "y" * 130))  # long enough for difflib's autojunk
    return out


def test_fuzz_ratio_matches_rapidfuzz() -> None:
    rf = pytest.importorskip("rapidfuzz.fuzz")
    for a, b in _random_code_pairs(11, 500):
        assert fuzz_ratio(a, b) == round(rf.ratio(a, b)), (a, b)


def test_fuzz_ratio_matches_fuzzywuzzy(monkeypatch: pytest.MonkeyPatch) -> None:
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    pairs = _random_code_pairs(5, 500)
    if fuzz.SequenceMatcher is not difflib.SequenceMatcher:  # python-Levenshtein backend
        for a, b in pairs:
            assert fuzz_ratio(a, b, "levenshtein") == fuzz.ratio(a, b), (a, b)
    # fuzzywuzzy without python-Levenshtein falls back to difflib.SequenceMatcher
    monkeypatch.setattr(fuzz, "SequenceMatcher", difflib.SequenceMatcher)
    for a, b in pairs:
        assert fuzz_ratio(a, b, "difflib") == fuzz.ratio(a, b), (a, b)


def test_code_sim_score_line_selection() -> None:
    # leading "\n" stripped; the line with "#" is skipped; indentation kept on both sides
    assert code_sim_score("\n\n    return x  # done\n    return y\n", "    return y") == 1.0
    # fenced code: the "```" lines are skipped
    assert code_sim_score("```python\nfoo()\n```", "foo()") == 1.0
    # "//" comment lines are skipped too
    assert code_sim_score("// note\nint x = 1;", "int x = 1;") == 1.0
    # a whitespace-only line qualifies: ratio("   ", "foo()") has no common char -> 0
    assert code_sim_score("   \nfoo()", "foo()") == 0.0
    # nothing qualifies -> "" ; ratio("", "abc") = 0 but ratio("", "") = 100
    assert code_sim_score("# a\n// b\n`c`", "abc") == 0.0
    assert code_sim_score("# a\n// b\n`c`", "") == 1.0


# --------------------------------------------------------------------------- #
# score_task / score_task_e
# --------------------------------------------------------------------------- #


def test_task_metrics_table() -> None:
    expected = {
        "narrativeqa": "qa_f1_score",
        "qasper": "qa_f1_score",
        "multifieldqa_en": "qa_f1_score",
        "hotpotqa": "qa_f1_score",
        "2wikimqa": "qa_f1_score",
        "musique": "qa_f1_score",
        "gov_report": "rouge_score",
        "qmsum": "rouge_score",
        "multi_news": "rouge_score",
        "trec": "classification_score",
        "triviaqa": "qa_f1_score",
        "samsum": "rouge_score",
        "passage_count": "count_score",
        "passage_retrieval_en": "retrieval_score",
        "lcc": "code_sim_score",
        "repobench-p": "code_sim_score",
    }
    assert {task: fn.__name__ for task, fn in TASK_METRICS.items()} == expected
    assert set(LONGBENCH_E_TASKS) <= set(TASK_METRICS) and len(LONGBENCH_E_TASKS) == 13
    assert FIRST_LINE_TASKS & set(TASK_METRICS) == {"trec", "triviaqa", "samsum"}


def test_score_task_first_line_rule_and_rounding() -> None:
    preds = ["\n\nParis\nLondon", " \nParis"]
    golds = [["Paris"], ["Paris"]]
    # triviaqa: "Paris" -> 1; " \nParis" -> first line " " (only "\n" is stripped) -> 0
    assert score_task("triviaqa", preds, golds) == 50.0
    # hotpotqa keeps both lines: [paris, london] vs [paris] -> 2/3; second -> 1
    # round(100 * (2/3 + 1) / 2, 2) = 83.33
    assert score_task("hotpotqa", preds, golds) == 83.33
    # samsum: only the first line is compared
    assert score_task("samsum", ["the cat sat\nsomething else"], [["the cat sat"]]) == 100.0
    # 1 of 3 right -> 33.33
    assert score_task("qasper", ["a b", "x", "y"], [["a b"], ["z"], ["z"]]) == 33.33


def test_score_task_max_over_answers() -> None:
    # musique-style several golds: max(F1 vs "Paris", F1 vs "Paris France") = 1
    assert score_sample("musique", "Paris", ["Paris France", "Paris"]) == 1.0
    assert score_task("musique", ["Paris"], [["London", "Paris France"]]) == round(100 * (2 / 3), 2)


def test_score_task_classification_and_code() -> None:
    classes = ["Animal", "Food", "Location"]
    # trec first line: "Food" -> 1; second sample names two labels -> 1/2: (1 + 0.5)/2 = 75.0
    preds = ["\nFood\nAnimal", "Food, Animal"]
    assert score_task("trec", preds, [["Food"], ["Food"]], classes) == 75.0
    with pytest.raises(ValueError, match="all_classes"):
        score_task("trec", ["Food"], [["Food"]])
    # lcc: 0.67 (Levenshtein) vs 0.33 (difflib)
    assert score_task("lcc", ["cabc"], [["ac"]]) == 67.0
    assert score_task("lcc", ["cabc"], [["ac"]], fuzz_backend="difflib") == 33.0


def test_score_task_errors() -> None:
    with pytest.raises(ValueError, match="narrativeqa") as info:
        score_task("narrative_qa", ["x"], [["x"]])
    assert "repobench-p" in str(info.value)
    with pytest.raises(ValueError, match="Chinese"):
        score_task("lsht", ["x"], [["x"]])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        score_task("qasper", ["x", "y"], [["x"]])
    with pytest.raises(ValueError, match="no predictions"):
        score_task("qasper", [], [])
    with pytest.raises(ValueError, match="empty"):
        score_task("qasper", ["x"], [[]])
    with pytest.raises(TypeError, match="list of str"):
        score_task("qasper", ["x"], ["x"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expected str"):
        score_task("qasper", [None], [["x"]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="fuzz backend"):
        score_task("lcc", ["x"], [["x"]], fuzz_backend="bogus")  # type: ignore[arg-type]


def test_score_task_e_buckets() -> None:
    assert [length_bucket(n) for n in (0, 3999, 4000, 7999, 8000, 20000)] == [
        "0-4k", "0-4k", "4-8k", "4-8k", "8k+", "8k+"
    ]
    preds = ["Paris", "x", "y", "Paris", "Paris"]
    golds = [["Paris"]] * 5
    lengths = [100, 3999, 3000, 5000, 9000]
    # 0-4k: [1, 0, 0] -> 33.33 ; 4-8k: [1] -> 100 ; 8k+: [1] -> 100
    expected = {"0-4k": 33.33, "4-8k": 100.0, "8k+": 100.0}
    assert score_task_e("hotpotqa", preds, golds, lengths) == expected
    assert score_task_e("hotpotqa_e", preds, golds, lengths)["0-4k"] == 33.33
    with pytest.warns(UserWarning) as record:
        out = score_task_e("hotpotqa", ["Paris"], [["Paris"]], [10])
    assert sorted(str(w.message) for w in record) == [
        "hotpotqa: LongBench-E bucket 4-8k is empty; its score is NaN",
        "hotpotqa: LongBench-E bucket 8k+ is empty; its score is NaN",
    ]
    assert out["0-4k"] == 100.0 and math.isnan(out["4-8k"]) and math.isnan(out["8k+"])
    with pytest.raises(ValueError, match="qasper"):
        score_task_e("narrativeqa", ["x"], [["x"]], [1])  # not a LongBench-E task
    with pytest.raises(ValueError, match="lengths"):
        score_task_e("qasper", ["x"], [["x"]], [1, 2])


# --------------------------------------------------------------------------- #
# Real data: multi_news
# --------------------------------------------------------------------------- #


def _multi_news_rows() -> list[dict]:
    path = DATA_DIR / "multi_news.jsonl"
    if not path.is_file():
        pytest.skip(f"LongBench data not found at {path}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_multi_news_self_and_shuffled() -> None:
    rows = _multi_news_rows()
    answers = [row["answers"] for row in rows]
    refs = [row["answers"][0] for row in rows]
    # each identical pair scores 0.999999995 -> 100 * mean rounds to 100.0
    assert score_task("multi_news", refs, answers) == 100.0
    assert all(s == IDENTICAL for s in sample_scores("multi_news", refs, answers))
    # another sample's summary scores lower
    shuffled = refs[1:] + refs[:1]
    score = score_task("multi_news", shuffled, answers)
    assert 0.0 < score < 100.0
    # LongBench-E buckets on the stored lengths: 185 / 12 / 3 rows (spec section 2.4)
    lengths = [row["length"] for row in rows]
    counts = {b: sum(length_bucket(n) == b for n in lengths) for b in M.LENGTH_BUCKETS}
    assert counts == {"0-4k": 185, "4-8k": 12, "8k+": 3}
    expected = {"0-4k": 100.0, "4-8k": 100.0, "8k+": 100.0}
    assert score_task_e("multi_news", refs, answers, lengths) == expected


def test_multi_news_matches_rouge_package() -> None:
    rouge = pytest.importorskip("rouge")
    rows = _multi_news_rows()[:20]
    ref_impl = rouge.Rouge()
    refs = [row["answers"][0] for row in rows]
    shuffled = refs[1:] + refs[:1]
    for pred, gold in zip(shuffled, refs):
        expected = ref_impl.get_scores([pred], [gold], avg=True)["rouge-l"]["f"]
        assert rouge_score(pred, gold) == expected
