#!/usr/bin/env bash
# Every check CI makes, in order: notebooks and package in sync, every lesson runs, the package tests.
# Usage (from the repository root, after `pip install -e ".[dev]"`):  bash tests/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DINO_COURSE_QUIET=1 MPLBACKEND=agg PYTHONUNBUFFERED=1
t0=$(date +%s)
sync_failed=0
budget_failed=0

echo "== 1/3 nbdev sync: notebooks are the source; nbdev_export and nbdev_clean must change nothing"
nbdev_export
nbdev_clean
changed=$(git status --porcelain -- dino_course nbs)
if [ -n "$changed" ]; then
  echo "FAILED: nbdev_export / nbdev_clean changed these files (edit nbs/*.ipynb, then run nbdev_export and nbdev_clean, and commit):"
  echo "$changed"
  git --no-pager diff --stat -- dino_course nbs
  sync_failed=1
else
  echo "in sync"
fi

echo "== 2/3 nbdev_test: every lesson top to bottom (cells flagged slow/cuda skipped)"
# one torch thread per notebook process: nbdev_test runs two notebooks at once on a 2-core machine
nb_log=$(mktemp)
OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing --do_print 2>&1 | tee "$nb_log" || { echo "FAILED: nbdev_test"; exit 1; }
t1=$(date +%s)
# each lesson within its time budget (tests/lesson_budgets.txt: 3 minutes unless a line there says otherwise)
python tests/check_budgets.py < "$nb_log" || budget_failed=1

echo "== 3/3 pytest: the package API"
python -m pytest -q tests
t2=$(date +%s)
echo "timings: notebooks $((t1-t0))s, pytest $((t2-t1))s, total $((t2-t0))s"
if [ "$budget_failed" = 1 ]; then echo "FAILED: a lesson went over its time budget (see the lesson times above)"; exit 1; fi
if [ "$sync_failed" = 1 ]; then echo "FAILED: notebooks and package out of sync (see step 1)"; exit 1; fi
