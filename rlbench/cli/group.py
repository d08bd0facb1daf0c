"""The ``rlbench`` command group: every command, and how an error that escapes one becomes a line and an exit code."""

from __future__ import annotations

import sys
from typing import Any

import click

from rlbench import __version__
from rlbench.cli.compare import compare
from rlbench.cli.config import config_keys
from rlbench.cli.errors import BAD_INPUT, INTERRUPTED, fail
from rlbench.cli.eval import eval_
from rlbench.cli.grade import grade
from rlbench.cli.plan import plan
from rlbench.cli.report import report
from rlbench.cli.reproduce import reproduce
from rlbench.cli.status import status
from rlbench.cli.train import list_, train, warmstart
from rlbench.cli.tune import tune
from rlbench.core.config import ConfigError
from rlbench.core.results import RunFileError


class OneLineErrors(click.Group):
    """Usage, config and file errors print one line naming the bad flag, key or file, and exit 2."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:
        try:
            return super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(BAD_INPUT)
        except click.UsageError as exc:
            fail(exc.format_message())
        except (ConfigError, RunFileError) as exc:
            fail(str(exc))
        except click.exceptions.Abort:
            click.echo("rlbench: interrupted", err=True)
            sys.exit(INTERRUPTED)
        except KeyboardInterrupt:
            click.echo("rlbench: interrupted; finished results were kept", err=True)
            sys.exit(INTERRUPTED)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="rlbench")
def main() -> None:
    """rlbench: race RL algorithms for LLM reasoning under matched budgets.

    \b
    Exit codes: 0 done; 2 bad flag, config value or file (one line names it, e.g. a full disk);
    3 the training run diverged (non-finite loss, gradient norm or weights); 130 interrupted.
    """


for _command in (train, list_, warmstart, compare, tune, grade, eval_, report, reproduce, plan, status, config_keys):
    main.add_command(_command)
