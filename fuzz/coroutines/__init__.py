"""Differential fuzzer for restored coroutines (issue 8).

gen.py writes seeded programs (prelude.lua is what they start with);
driver.py runs one natively and through snapshots and compares the logs;
worker.py is the pool of processes; minimize.py shrinks a failing program.

    python -m fuzz.coroutines run --seeds 0:1000 --jobs 2   # a campaign
    python -m fuzz.coroutines show SEED                      # one program, both logs
    python -m fuzz.coroutines min SEED                       # the smallest failing version
"""
