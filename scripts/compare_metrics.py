"""Compare the metrics.csv of runs in two folders as text, every column but the timing ones.

Usage: python scripts/compare_metrics.py BEFORE AFTER RUN [RUN ...]
compares BEFORE/RUN/metrics.csv with AFTER/RUN/metrics.csv cell by cell (as written: every bit of
each float counts) and prints the differing cells; the last line is IDENTICAL or DIFFERENT. Used to
show that a refactor of the measurement changes no number (issue 26: the probes).
"""
import csv, sys
TIMING = {"time_s", "measure_s"}
def read(p):
    with open(p) as f:
        r = list(csv.reader(f))
    return r[0], r[1:]
ok = True
for name in sys.argv[3:]:
    ha, ra = read(f"{sys.argv[1]}/{name}/metrics.csv")
    hb, rb = read(f"{sys.argv[2]}/{name}/metrics.csv")
    if ha != hb:
        print(name, "HEADER DIFFERS", set(ha) ^ set(hb)); ok = False; continue
    keep = [i for i, h in enumerate(ha) if h not in TIMING]
    diff = [(j, ha[i], a[i], b[i]) for j, (a, b) in enumerate(zip(ra, rb)) for i in keep if a[i] != b[i]]
    print(f"{name}: {len(ra)} rows x {len(keep)} columns compared (of {len(ha)}), {len(diff)} cells differ" + ("" if len(ra)==len(rb) else f" ROWS {len(ra)} vs {len(rb)}"))
    for d in diff[:10]: print("   ", d)
    ok &= not diff and len(ra) == len(rb)
print("IDENTICAL" if ok else "DIFFERENT")
