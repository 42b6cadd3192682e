from __future__ import annotations

from typing import Any

from shared.identity import users
from web.api import BODY_ERRORS, Blueprint
from web.auth import issue_token
from web.extensions import db
from web.schemas import LoginSchema, RegisterSchema, TokenSchema, UserSchema

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Registration and sign-in")


@blp.post("/register")
@blp.doc(security=[])
@blp.arguments(RegisterSchema)
@blp.response(201, UserSchema)
@blp.errors(*BODY_ERRORS, (409, "that email is already registered"), 429, 503)
def register(body: dict[str, Any]) -> Any:
    user = users.register(db.session, body["email"], body["password"])
    db.session.commit()
    return user


@blp.post("/login")
@blp.doc(security=[])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.errors(*BODY_ERRORS, (401, "wrong email or password"), 429, 503)
def login(body: dict[str, Any]) -> Any:
    user = users.authenticate(db.session, body["email"], body["password"])
    db.session.commit()  # a re-hashed password, if argon2's parameters changed
    token, ttl = issue_token(user)
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
