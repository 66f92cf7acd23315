"""One settings file, read from the environment (and a `.env` file) through django-environ."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# `.env` is for running the site. Tests and CI set CHAT_IGNORE_DOTENV=1 (tests/isolation.py, .ci/run):
# a developer's keys, database or Redis must not leak into them.
if (BASE_DIR / ".env").is_file() and not env.bool("CHAT_IGNORE_DOTENV", default=False):
    environ.Env.read_env(BASE_DIR / ".env")

# DEBUG is on by default so `make run` works on a fresh machine; production sets
# DEBUG=false and must then give a real SECRET_KEY and ALLOWED_HOSTS (checked below).
DEBUG = env.bool("DEBUG", default=True)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key-do-not-use-in-production")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
else:
    SECRET_KEY = env.str("SECRET_KEY", default="")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
    # Django's own deploy check (security.W009) asks for 50+ characters, 5+ of them distinct.
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("dev-only"):
        raise ImproperlyConfigured("Set SECRET_KEY (50+ random characters) when DEBUG is off.")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("Set ALLOWED_HOSTS when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "conversations",
    "usage",
    "api",
    "accounts",
    "attachments",
    # After the site's apps: a command name belongs to the first app that has it, and conversations'
    # `db_worker` (the worker without system checks, to keep it small) wraps django-tasks-db's.
    "django_tasks",
    "django_tasks_db",
]
# daphne's app gives `runserver` its ASGI version, and installs Twisted's asyncio reactor as Django
# starts (about 35 MB). Only `runserver` needs it: the daphne command installs its reactor itself,
# and nothing else (uvicorn, the task worker, the tests) runs on Twisted. The task worker never
# serves a request: it goes without the OpenID Connect sign-in too, whose provider module allauth
# loads at start with `requests` (about 5 MB). Neither app has models.
if sys.argv[1:2] == ["db_worker"]:
    INSTALLED_APPS.remove("allauth.socialaccount.providers.openid_connect")
elif sys.argv[1:2] == ["runserver"]:
    INSTALLED_APPS.insert(0, "daphne")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.chat",
                "accounts.context_processors.account",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # daphne and the task worker write at the same time: WAL lets readers go on while one
    # writes, and IMMEDIATE transactions take the write lock up front so a transaction
    # never fails half-way with "database is locked"; busy waits instead of erroring.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Connections kept open (each thread keeps its own): opening one runs the PRAGMAs above, and
    # reopening per request or per database hop was a tenth of the server's CPU under load.
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=600))
    # Tests use a file too (not shared-cache memory): several threads write, as in production.
    # One per test process, so parallel runs never share a test database.
    DATABASES["default"].setdefault(
        "TEST", {"NAME": str(Path(tempfile.gettempdir()) / f"chat-test-{os.getpid()}.sqlite3")}
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    DATABASES["default"].setdefault("TEST", {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and cache ------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Prefix of this site's cache keys and channel-layer names in Redis: sites (or test runs) that share
# one Redis keep apart by it (Redis pub/sub channels ignore the database number).
REDIS_PREFIX = env.str("REDIS_PREFIX", default="")
if REDIS_URL:
    # RedisPubSubChannelLayer, not the classic RedisChannelLayer: measured at 200 concurrent
    # streams the classic layer (a blocking BZPOPMIN per channel, each holding a pooled connection
    # for up to 5 s) exhausted redis-py's pool of 100, which raises instead of waiting: most
    # tokens were lost (see docs/architecture.md). The pub/sub layer holds one connection per process.
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis's pub/sub layer with its publishes pipelined (conversations/layers/).
            "BACKEND": "conversations.layers.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}asgi"},
        }
    }
    # django-redis, not Django's own RedisCache: Django builds a cache object per async context (every
    # sync_to_async call), and its RedisCache then opens a new pool and connection for one command;
    # django-redis keeps one connection pool per process (docs/performance.md: TTFT 1,132 -> 768 ms).
    CACHES = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": REDIS_PREFIX}
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "conversations.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000, "expiry": 60},
        }
    }
    # Room for a long thread's rendered messages beside the small per-user entries (Django's default,
    # 300, culls a third of the cache at random when one 1,000-message thread is opened).
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "OPTIONS": {"MAX_ENTRIES": 20000}}
    }

# --- Your data (accounts/): import limits ----------------------------------------------
ACCOUNT_IMPORT_MAX_MB = env.int("ACCOUNT_IMPORT_MAX_MB", default=100)
ACCOUNT_IMPORT_MAX_CONVERSATIONS = env.int("ACCOUNT_IMPORT_MAX_CONVERSATIONS", default=5000)
ACCOUNT_IMPORT_MAX_MESSAGES = env.int("ACCOUNT_IMPORT_MAX_MESSAGES", default=200_000)
ACCOUNT_IMPORT_INLINE_KB = env.int("ACCOUNT_IMPORT_INLINE_KB", default=1024)  # larger files: the worker

# --- Background tasks (Django's tasks API, database backend) ---------------------------
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# --- Accounts (django-allauth) -----------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
ACCOUNT_LOGIN_METHODS = {"email", "username"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="optional")
ACCOUNT_LOGOUT_ON_GET = False
# Failed logins: per client address, and per account (`key`: api.sso.AccountAdapter makes "alice",
# "ALICE" and alice's email one counter).
ACCOUNT_RATE_LIMITS = {"login_failed": env.str("LOGIN_RATE_LIMIT", default="10/m/ip,5/5m/key")}
# Sign-up never says an email is registered: with verification optional, allauth's "strict" lets the
# sign-up through with the address unverified on the new account (the owner's account is untouched).
ACCOUNT_PREVENT_ENUMERATION = "strict"
# Local sign-up (the form at /accounts/signup/); false leaves SSO as the only way in.
ACCOUNT_ALLOW_SIGNUP = env.bool("ACCOUNT_ALLOW_SIGNUP", default=True)
ACCOUNT_ADAPTER = "api.sso.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "api.sso.SocialAccountAdapter"
# Single sign-on (OpenID Connect): configured from the environment, or as a SocialApp in the admin.
OIDC_SERVER_URL = env.str("OIDC_SERVER_URL", default="")
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = env.str("OIDC_CLIENT_SECRET", default="")
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="") or "single sign-on"
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="")
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {"openid_connect": {"OAUTH_PKCE_ENABLED": True}}
if OIDC_SERVER_URL and OIDC_CLIENT_ID and OIDC_CLIENT_SECRET:
    SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"] = [
        {
            "provider_id": "sso",  # the callback: /accounts/oidc/sso/login/callback/
            "name": OIDC_PROVIDER_NAME,
            "client_id": OIDC_CLIENT_ID,
            "secret": OIDC_CLIENT_SECRET,
            "settings": {"server_url": OIDC_SERVER_URL},
        }
    ]
SOCIALACCOUNT_LOGIN_ON_GET = False  # the button POSTs (with CSRF) to start the sign-in
SOCIALACCOUNT_STORE_TOKENS = False
# An identity provider's user joins an existing account only through an email the IdP says is verified.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="chat@localhost")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve static files straight from STATICFILES_DIRS: no collectstatic step to forget
# (so an absent STATIC_ROOT is normal, not worth a warning).
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at", module="whitenoise.base")

# --- Uploaded files (attachments) ----------------------------------------------------------
# Django's storage API: local files under MEDIA_ROOT by default; any S3-compatible store when
# AWS_STORAGE_BUCKET_NAME is set (django-storages). Never served from a public URL: only through
# the owner-checking view (attachments/views.py), so MEDIA_URL is not routed anywhere.
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "media")))
MEDIA_URL = "/media-not-served/"
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default="") or None,
            "location": env.str("AWS_LOCATION", default=""),
            "default_acl": None,  # private objects: the bucket's policy, never public-read
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Per file, per user (everything stored), and per message.
CHAT_MAX_UPLOAD_MB = env.int("CHAT_MAX_UPLOAD_MB", default=20)
CHAT_USER_STORAGE_MB = env.int("CHAT_USER_STORAGE_MB", default=500)
CHAT_MAX_ATTACHMENTS = env.int("CHAT_MAX_ATTACHMENTS", default=10)
# Larger images (in pixels) are refused: decoding one takes memory in proportion.
CHAT_MAX_IMAGE_PIXELS = env.int("CHAT_MAX_IMAGE_PIXELS", default=40_000_000)
# Uploads never sent are deleted after this many hours (attachments.tasks.sweep_orphans).
CHAT_ORPHAN_HOURS = env.float("CHAT_ORPHAN_HOURS", default=24.0)
# Bodies larger than this are spooled to a temporary file, not held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# --- Security ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the page's script reads it for htmx requests
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# The identity provider's origin (and any listed for SocialApps made in the admin).
_sso_origins = [
    f"{u.scheme}://{u.netloc}"
    for u in map(urlsplit, [OIDC_SERVER_URL, *env.list("SSO_FORM_ACTION_ORIGINS", default=[])])
    if u.netloc
]

# No inline script anywhere: every script is a static file.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        # blob: the composer's thumbnails of files being uploaded (object URLs of the user's own files).
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        # The SSO button's form redirects to the identity provider: browsers hold redirects to form-action.
        "form-action": ["'self'", *_sso_origins],
    }
}

# --- The chat itself ---------------------------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")


def _default_model() -> str:
    if OPENAI_API_KEY or OPENAI_BASE_URL:
        return "openai:gpt-4o-mini"
    if ANTHROPIC_API_KEY:
        return "anthropic:claude-haiku-4-5"
    return "offline:demo"


CHAT_DEFAULT_MODEL = env.str("CHAT_DEFAULT_MODEL", default="") or _default_model()
CHAT_CONTEXT_BUDGET_TOKENS = env.int("CHAT_CONTEXT_BUDGET_TOKENS", default=8000)
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=20000)
CHAT_RATE_LIMIT = env.str("CHAT_RATE_LIMIT", default="30/m")
CHAT_DAILY_TOKEN_QUOTA = env.int("CHAT_DAILY_TOKEN_QUOTA", default=0)
# How often a streaming reply's text is written to the database (seconds).
CHAT_FLUSH_INTERVAL = env.float("CHAT_FLUSH_INTERVAL", default=1.0)
# A streaming reply whose row has not been touched for this long belongs to a dead process.
CHAT_STALE_AFTER = env.float("CHAT_STALE_AFTER", default=10.0)
# Provider timeouts (seconds): connecting, and the longest silence between two chunks.
CHAT_CONNECT_TIMEOUT = env.float("CHAT_CONNECT_TIMEOUT", default=10.0)
CHAT_READ_TIMEOUT = env.float("CHAT_READ_TIMEOUT", default=60.0)
# Retries of a provider's 429/5xx/connection error before the first token.
CHAT_PROVIDER_RETRIES = env.int("CHAT_PROVIDER_RETRIES", default=3)
CHAT_RETRY_BASE_DELAY = env.float("CHAT_RETRY_BASE_DELAY", default=1.0)
CHAT_RETRY_MAX_DELAY = env.float("CHAT_RETRY_MAX_DELAY", default=20.0)
# Delay between words of the offline demo model (seconds).
CHAT_OFFLINE_WORD_DELAY = env.float("CHAT_OFFLINE_WORD_DELAY", default=0.04)
# Websocket limits: largest frame (bytes) and frames per 10 seconds per socket.
CHAT_MAX_FRAME_BYTES = env.int("CHAT_MAX_FRAME_BYTES", default=CHAT_MAX_MESSAGE_CHARS * 4 + 1024)
CHAT_MAX_FRAMES_PER_10S = env.int("CHAT_MAX_FRAMES_PER_10S", default=60)
# Seconds a stopping daphne or uvicorn process (SIGTERM) lets its running replies finish before it stores
# them as `interrupted`.
CHAT_SHUTDOWN_GRACE = env.float("CHAT_SHUTDOWN_GRACE", default=30.0)
# Open websockets per user, across every process on Redis (0: no limit); one more is refused.
CHAT_MAX_SOCKETS_PER_USER = env.int("CHAT_MAX_SOCKETS_PER_USER", default=20)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
