"""`make bench` / `python -m bench`: list the benchmarks and how to run each (they take minutes and load
the machine, so none runs by default)."""

BENCHMARKS = """\
SMS core (docs/performance.md, issue 2):
  .venv/bin/python -m bench.bench_sms ingest   --seconds 8 --connections 64
  .venv/bin/python -m bench.bench_sms overhead --messages 500
  .venv/bin/python -m bench.bench_sms latency  --clients 100 --events 200
  .venv/bin/python -m bench.bench_sms rss      --modems 8 --clients 100
HTTP SMS provider route (issue 4):
  .venv/bin/python -m bench.bench_http_provider
SMS platform (issue 4):
  .venv/bin/python -m bench.bench_campaigns accept
  .venv/bin/python -m bench.bench_campaigns scaling
  .venv/bin/python -m bench.bench_campaigns provider
Line DSP (issue 3):
  .venv/bin/python -m bench.bench_dsp --channels 2000 --seconds 10
Voice lines and IVR (issues 5 and 6):
  .venv/bin/python -m bench.bench_voice screenpop --lines 32 --clients 100 --rounds 3
  .venv/bin/python -m bench.bench_voice cpu --lines 32 --seconds 10
  .venv/bin/python -m bench.bench_ivr --lines 32 --presses 8
"""

print(BENCHMARKS, end="")
