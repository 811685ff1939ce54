"""The build stages' prompts, one file a stage, versioned by directory (`v1/`).

A file holds the system prompt, a line `---`, then the user message as a `string.Template`
(`$requirement`, `$design`, ...; `$` because the prompts show JSON and Python, full of
braces). A changed prompt is a new version directory, so a build's stages record which
prompts produced them (`prompt_version` in the stage's model usage).
"""

import functools
import string
from dataclasses import dataclass
from importlib import resources

PROMPT_VERSION = "v1"


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: string.Template

    def render(self, **values: str) -> tuple[str, str]:
        """(system, user); a missing value is a KeyError, not a silently empty prompt."""
        return self.system, self.user.substitute(values)


@functools.cache
def load(name: str) -> Prompt:
    text = resources.files(__package__).joinpath(PROMPT_VERSION, f"{name}.md").read_text("utf-8")
    system, separator, user = text.partition("\n---\n")
    if not separator:
        raise ValueError(f"prompt {PROMPT_VERSION}/{name}.md has no '---' line between system and user")
    return Prompt(name=name, system=system.strip(), user=string.Template(user.strip()))
