"""`python -m kitae` runs the CLI: what `accelerate launch -m kitae train CONFIG` starts on every process."""

from kitae.cli import app

if __name__ == "__main__":
    app(prog_name="kitae")
