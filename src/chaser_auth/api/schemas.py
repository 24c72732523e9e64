"""The public contract. Class names are schema names in the OpenAPI document and match the
Chaser Core API exactly (`PasswordResetRequest`, `MessageResponse`,
`PasswordResetConfirmRequest`, `VerifyEmailRequest`, `AuthResponse`);
so do field names and required lists. Models are strict — a number is not an email — and
ignore unknown fields."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("*", mode="after", check_fields=False)
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        # JSON may spell a lone surrogate ("\ud800"), which is a valid Python str but no
        # UTF-8 text: refused here, so nothing downstream has to encode it.
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text") from None
        return value


class PasswordResetRequest(Schema):
    """Request body to request a password reset email."""

    model_config = ConfigDict(title="PasswordResetRequest")
    email: str


class MessageResponse(Schema):
    """Generic message response."""

    model_config = ConfigDict(title="MessageResponse")
    message: str


class PasswordResetConfirmRequest(Schema):
    """Request body to complete a password reset."""

    model_config = ConfigDict(title="PasswordResetConfirmRequest")
    password: str
    token: str


class AuthResponse(Schema):
    """Response containing auth token."""

    model_config = ConfigDict(title="AuthResponse")
    email: str
    token: str
    user_id: str


class PasswordResetVerifyRequest(Schema):
    """Request body to check a password reset token without using it."""

    token: str


class PasswordResetVerifyResponse(Schema):
    """The token may be used until `expires_at`."""

    valid: bool
    expires_at: datetime


class CodeRequest(Schema):
    """The address a one-time code was mailed to, and the code (spaces and hyphens allowed)."""

    email: str
    code: str


class PasswordResetCodeResponse(Schema):
    """The reset link's token, for `password-reset/confirm` (or `verify`) as from the link;
    it works until `expires_at`."""

    token: str
    expires_at: datetime


class VerifyEmailRequest(Schema):
    """Request body for email verification completion."""

    model_config = ConfigDict(title="VerifyEmailRequest")
    token: str


class VerifyEmailResendRequest(Schema):
    """The address to send a new verification link to."""

    email: str


class RegisterRequest(Schema):
    """Email address and password for a new account, and optionally its language."""

    email: str
    password: str
    locale: str | None = Field(
        default=None,
        max_length=35,
        description="The language of the account's mail, as a language tag (`de`, `pt-BR`); "
        "matched against the shipped languages. Without it, or when it matches none, the "
        "request's `Accept-Language` decides, else English.",
        examples=["de"],
    )


class PasswordChangeRequest(Schema):
    """The current password and the new one."""

    current_password: str
    password: str


class EmailChangeRequest(Schema):
    """The current password and the address to move the account to."""

    current_password: str
    email: str


class EmailChangeTokenRequest(Schema):
    """The token of an address-change link (confirm or undo)."""

    token: str


class SessionInfo(Schema):
    """One signed-in session of the account (never its token)."""

    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    current: bool
    device: str | None = Field(
        description='The browser or client it was opened from, e.g. "Firefox 128 on Windows 10"'
    )
    place: str | None = Field(
        description="The network it was last used from: an IPv4 /24 or an IPv6 /48"
    )


class SessionList(Schema):
    """The account's live sessions, most recently used first."""

    sessions: list[SessionInfo]


class LoginRequest(Schema):
    """Email address and password."""

    email: str
    password: str


class MeResponse(Schema):
    """The account behind the bearer token."""

    user_id: uuid.UUID
    email: str
    email_verified: bool
    created_at: datetime
    password_changed_at: datetime | None


class ErrorBody(Schema):
    code: str
    message: str
    details: list[Any]


class ErrorResponse(Schema):
    """Every error, whatever the endpoint."""

    error: ErrorBody


class HealthResponse(Schema):
    status: str
