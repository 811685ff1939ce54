"""Our own token count, for endpoints that report no usage (and for the offline provider).

No tokenizer ships offline for every model (tiktoken downloads its tables at run time), so
the count is the common rule of thumb of about four characters of English per token, plus a
few tokens of chat framing per message. Records that use it say `tokens_estimated: true`.
"""

import math
from collections.abc import Iterable

from api.providers.base import Message

CHARACTERS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARACTERS_PER_TOKEN)


def estimate_prompt_tokens(messages: Iterable[Message]) -> int:
    return sum(TOKENS_PER_MESSAGE + estimate_tokens(message.content) for message in messages)
