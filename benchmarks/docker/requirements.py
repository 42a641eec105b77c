"""Print the requirements of the image: the engine, the given extras and the build backend.

Read from pyproject.toml alone, so that the dependencies layer is rebuilt only when they change
(not on every edit of the sources); every version then comes from constraints.txt.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[2:]:
    requirements += project["optional-dependencies"][extra]
# The editable install of the project builds with these, offline (no build isolation).
requirements += ["setuptools", "wheel"]
print("\n".join(requirements))
