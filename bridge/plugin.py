"""The plugin API: everything a backend plugin may import from the core, and nothing else.

A plugin is a distribution with an entry point in the ``pipedrive_video_bridge``
group whose module implements the ``register_backends`` hook::

    from bridge.plugin import Backend, BackendContext, MeetingRequest, Room, hookimpl

    @hookimpl
    def register_backends(register):
        register(MyVendorBackend)

The names in ``__all__`` are the contract; the rest of the core may change
without notice. A plugin's tests may use ``bridge.testing`` as well.
"""

from bridge.api.auth import basic_auth
from bridge.errors import BackendError, BackendTimeout, BackendUnavailable, BridgeError
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.http import IDEMPOTENT_EXTENSION, RETRY_EXTENSION, THROTTLED_EXTENSION, raise_for_vendor
from bridge.vendors.interface import (
    GUEST,
    HOST,
    Backend,
    BackendContext,
    CredentialStore,
    Joining,
    MeetingRequest,
    Room,
    UserIdentity,
    VendorRoom,
)
from bridge.vendors.invitation import render_invitation
from bridge.vendors.settings import base_url, optional_bool, optional_text, required_text
from bridge.vendors.tokens import (
    GrantRefused,
    Token,
    TokenAnswer,
    TokenAuth,
    TokenKeeper,
    TokenRefused,
    TokenStore,
    token_answer,
)

__all__ = [
    "GUEST",
    "HOST",
    "IDEMPOTENT_EXTENSION",
    "RETRY_EXTENSION",
    "THROTTLED_EXTENSION",
    "Backend",
    "BackendContext",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BridgeError",
    "CredentialStore",
    "GrantRefused",
    "Joining",
    "MeetingRequest",
    "Room",
    "Token",
    "TokenAnswer",
    "TokenAuth",
    "TokenKeeper",
    "TokenRefused",
    "TokenStore",
    "UserIdentity",
    "VendorRoom",
    "base_url",
    "basic_auth",
    "hookimpl",
    "optional_bool",
    "optional_text",
    "raise_for_vendor",
    "render_invitation",
    "required_text",
    "token_answer",
]
