"""What the command line checks before TensorFlow starts.

Nothing here imports TensorFlow: ``main`` runs these checks first, so that a user
mistake (a gin file that does not exist or parse, a binding that names no
configurable or parameter, a value of the wrong type, an unwritable model
directory, a dataset that is not there) ends the run in well under a second
with one line naming what and where.

- ``recipes``: gin files by path or by recipe name, from a checkout or an
  installed package.
- ``source_index``: every ``@gin.configurable`` of the package, read from the
  source (ast), with its parameters and, for dataclass records, their types.
- ``gin_statements``: gin files and bindings read into statements without
  building anything.
- ``value_types``: a bound value against a field's annotation.
- ``preflight``: the checks themselves.
"""
