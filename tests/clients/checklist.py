"""The client tests' tally: one line per check ("ok   ..." or "FAIL ... detail"), then "NAME: N passed, M failed"
and an exit status that says whether all passed (scripts/test.sh stops on a non-zero one)."""
import sys

passed = failed = 0


def check(name, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def finish(suite):
    print(f"{suite}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
