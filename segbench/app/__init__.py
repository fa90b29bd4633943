"""The app layer: one module per verb; the only code that reads Hydra's runtime, composes
configs and makes run dirs. Importing it registers the config resolvers (:mod:`.outputs`) and
the config schemas (:mod:`.schema`)."""
from segbench.app import outputs  # noqa: F401 - registers the resolvers segbench's configs use
from segbench.app import schema  # noqa: F401 - registers the schemas the YAML defaults lists name
