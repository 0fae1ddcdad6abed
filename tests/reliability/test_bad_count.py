"""How many bad-input cases the suite holds, by verdict (the error class each raises, or "correct result"):
at least 110, none of them unchecked, every name unique."""

from __future__ import annotations

from collections import Counter

import attrib

from . import test_bad_backward, test_bad_core, test_bad_methods, test_bad_patching, test_bad_results

FILES = {"core": test_bad_core, "backward": test_bad_backward, "methods": test_bad_methods,
         "patching": test_bad_patching, "results": test_bad_results}


def all_cases():
    return [case for module in FILES.values() for case in module.CASES]


def test_the_suite_holds_at_least_110_cases_and_prints_them_by_verdict():
    cases = all_cases()
    by_verdict = Counter(case.verdict for case in cases)
    by_file = {name: len(module.CASES) for name, module in FILES.items()}
    print(f"\nbad-input cases: {len(cases)} ({', '.join(f'{k} {n}' for k, n in by_file.items())})")
    for verdict, n in sorted(by_verdict.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {verdict}: {n}")
    assert len(cases) >= 110
    assert len({c.name for c in cases}) == len(cases), "case names must be unique across files"
    for case in cases:
        if case.error is None:
            assert case.check is not None, f"{case.name}: a correct-result case needs an independent check"
        else:
            assert issubclass(case.error, attrib.AttribError) and case.match, case.name
    errors = {c.error for c in cases if c.error is not None}
    assert len(errors) >= 15, "the suite covers most error classes"
