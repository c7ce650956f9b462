"""``kelp loadtest PROFILE [flags]``: parse, run, report, and turn the verdict into an exit code.

Exit codes: 0 the run passed (nothing lost, nothing duplicated, errors within ``--max-errors``,
RSS growth within its bound); 1 it ran and failed one of those; 2 it could not run (Kafka or
the registry unreachable, a worker failed to start).
"""

from __future__ import annotations

import sys

from kelp.loadtest.profiles import parse
from kelp.loadtest.report import build_result, judge, make_display, plot, render_summary, write_json
from kelp.loadtest.runner import LoadTest, SetupError

EXIT_SETUP = 2


def main(argv: list[str] | None = None) -> int:
    profile, options = parse(argv)
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("kelp loadtest needs confluent-kafka: pip install 'kelp[loadtest]'",
              file=sys.stderr)
        return EXIT_SETUP
    display = make_display(options.live, options.interval)
    test = LoadTest(profile, options, display)
    try:
        test.execute()
    except SetupError as exc:
        display.close()
        print(f"kelp loadtest: {exc}", file=sys.stderr)
        if options.json_out is not None:
            write_json({"schema": "kelp-loadtest/1", "ok": False, "exit_code": EXIT_SETUP,
                        "error": str(exc)}, options.json_out)
        return EXIT_SETUP
    display.close()
    result = build_result(test)
    judge(result)
    if options.plot is not None:
        result["plot"] = plot(result, options.plot)
    if options.json_out is not None:
        write_json(result, options.json_out)
    print(render_summary(result), flush=True)
    if options.json_out is not None:
        print(f"  result     {options.json_out}", flush=True)
    return int(result["exit_code"])
