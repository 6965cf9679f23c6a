"""The command line: subcommands that are not the daemon itself."""

import subprocess
import sys

from daemon.cli import main


def test_bench_subcommand_hands_every_option_to_the_benchmark(capsys):
    """`storepulse bench --help` is the benchmark's own help (issue 7 names `storepulse bench`)."""
    try:
        main(["bench", "--help"])
    except SystemExit as exc:   # argparse's --help exits 0
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "benchmarks.run" in out and "--scenarios" in out and "--quick" in out


def test_bench_subcommand_from_the_console_script():
    proc = subprocess.run([sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
                           "bench", "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0 and "--baselines" in proc.stdout
