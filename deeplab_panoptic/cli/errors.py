"""The one error type of the command line's checks."""


class UsageError(Exception):
  """A user mistake: a flag, a gin file or binding, the model directory or the data.

  Its message is one line that names what is wrong and where; ``main`` prints it
  as ``error: <message>`` and exits with status 2, without a traceback.
  """
