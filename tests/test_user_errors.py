"""The shared one-line error path of the commands."""

from echo_jax.user_errors import EXIT_USER_ERROR, UserError, run_cli


def test_message_has_every_part_on_one_line():
  e = UserError("bad line", where="p.jsonl", line=3, why="not JSON\nat all", fix="fix it")
  assert e.message() == "bad line in p.jsonl:3: not JSON at all; fix it"


def test_run_cli_turns_user_errors_into_exit_2(capsys):
  def main(argv):
    raise UserError("--block_len 0", why="must be positive")

  assert run_cli(main, []) == EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert err == "error: --block_len 0: must be positive\n"


def test_run_cli_passes_status_and_internal_errors():
  assert run_cli(lambda argv: None, []) == 0
  assert run_cli(lambda argv: 3, []) == 3
  try:
    run_cli(lambda argv: 1 / 0, [])
  except ZeroDivisionError:
    pass
  else:
    raise AssertionError("internal errors must keep their traceback")
