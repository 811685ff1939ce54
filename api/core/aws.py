"""The AWS region as the standard settings give it, for every AWS client of the service."""

import os

import botocore.session


def standard_region() -> str | None:
    """AWS_REGION (botocore itself reads only the next two), AWS_DEFAULT_REGION, the region of
    the AWS profile; None when none is set."""
    return os.environ.get("AWS_REGION") or botocore.session.get_session().get_config_variable("region")
