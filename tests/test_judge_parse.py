"""The judge-verdict parser on replies shaped like real judges' answers."""
import pytest

from qr_ds.filter.judge import judge_prompt, parse_verdict

CASES = [
    ('{"verdict": "VALID", "reason": "each step follows"}', "VALID", "each step follows"),
    ('```json\n{"verdict": "invalid", "reason": "step 2 invents a rule"}\n```', "INVALID", "step 2 invents a rule"),
    ('Sure! Here is my assessment:\n{"is_valid": false, "explanation": "uses a false fact"}', "INVALID", "uses a false fact"),
    ("Verdict: VALID\nReason: all steps are supported.", "VALID", "all steps are supported."),
    ("**Verdict:** INVALID\n\nStep 3 claims 12 is divisible by 7.", "INVALID", "Step 3 claims 12 is divisible by 7."),
    ("## Final verdict\nNOT VALID: the second step is unsupported", "INVALID", "the second step is unsupported"),
    ("The reasoning is valid.", "VALID", "The reasoning is valid."),
    ("After checking every line, the solution is logically sound and reaches the answer.", "VALID", None),
    ("INVALID - step 3 asserts a fact that is false and unused", "INVALID", "step 3 asserts a fact that is false and unused"),
    ("invalid. the path adds 12 for no reason", "INVALID", "the path adds 12 for no reason"),
    ("valid", "VALID", ""),
    ("The solution contains no hallucinated or spurious steps.", "VALID", None),
    ("The solution contains a spurious intermediate step in line 4.", "INVALID", None),
    ("I looked carefully.\n\nMy judgment: Invalid — the carrying rule in step 2 is made up.", "INVALID",
     "the carrying rule in step 2 is made up."),
    ("Overall I'd mark this INVALID because of step 4.", "INVALID", None),
]


@pytest.mark.parametrize("text,verdict,reason", CASES)
def test_parses(text, verdict, reason):
    got = parse_verdict(text)
    assert got is not None and got[0] == verdict, (text, got)
    if reason is not None:
        assert got[1] == reason


@pytest.mark.parametrize("text", ["", "   ", "Hmm. Let me think about the steps.",
                                  "I would need to look at this more carefully.",
                                  "It could be VALID or INVALID depending on the reading."])
def test_no_verdict_is_none(text):
    assert parse_verdict(text) is None


def test_prompt_carries_question_and_path_and_asks_for_json():
    p = judge_prompt("What is {2+2}?", "2 + 2 = 4. The answer is 4.")
    assert "What is {2+2}?" in p and "The answer is 4." in p and '"verdict"' in p
