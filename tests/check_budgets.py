"""Read `nbdev_test --timing` output (stdin), print each lesson's time against its budget (tests/lesson_budgets.txt)
and exit 1 if a lesson went over. Usage: nbdev_test --timing ... | tee log; python tests/check_budgets.py < log"""
import re, sys
from pathlib import Path

def budgets(path=Path(__file__).with_name('lesson_budgets.txt')) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split('#')[0].split()
        if len(line) == 2: out[line[0].removesuffix('.ipynb')] = float(line[1])
    return out

def main(text: str) -> int:
    times = {m.group(1): float(m.group(2)) for m in re.finditer(r'^(\S+)\.ipynb: ([\d.]+) secs', text, re.M)}
    if not times: print("check_budgets: no lesson timings found in the nbdev_test output"); return 1
    b, over = budgets(), []
    print("lesson times (s) against their budgets (tests/lesson_budgets.txt):")
    for name, t in sorted(times.items()):
        limit = b.get(name, b['default'])
        print(f"  {name:<20} {t:6.0f} / {limit:.0f}{'  OVER BUDGET' if t > limit else ''}")
        if t > limit: over.append(f"{name} took {t:.0f} s, over its budget of {limit:.0f} s")
    for o in over: print(f"FAILED: {o} (cut its cost, or raise its line in tests/lesson_budgets.txt with a reason)")
    return 1 if over else 0

if __name__ == '__main__': sys.exit(main(sys.stdin.read()))
