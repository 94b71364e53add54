-- The users service's own schema (DESIGN.md: each seed service keeps its schema): organisations, their
-- supply contracts, users, rotating refresh tokens, login throttling and the cache of external checks.
-- Organisations own devices later (item 3): devices will reference auth.organisations(id) by id only.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.organisations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    inn             text NOT NULL UNIQUE CHECK (inn ~ '^([0-9]{10}|[0-9]{12})$'),
    kind            text CHECK (kind IN ('legal_entity', 'entrepreneur')),
    name            text CHECK (length(name) <= 1000),
    short_name      text CHECK (length(short_name) <= 1000),
    kpp             text CHECK (kpp ~ '^[0-9A-Z]{9}$'),
    ogrn            text CHECK (ogrn ~ '^([0-9]{13}|[0-9]{15})$'),
    address         text CHECK (length(address) <= 2000),
    register_status text,
    -- How the INN was checked: 'api-fns' (ЕГРЮЛ/ЕГРИП card above) or 'checksum' (development fallback).
    inn_verified_by text NOT NULL CHECK (inn_verified_by IN ('api-fns', 'checksum')),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.supply_contracts (
    organisation_id uuid NOT NULL REFERENCES auth.organisations (id) ON DELETE CASCADE,
    contract_number text NOT NULL CHECK (length(contract_number) BETWEEN 1 AND 100),
    -- 'gkh': confirmed in force by the contract check; 'unverified': accepted unchecked (development).
    verified_by     text NOT NULL CHECK (verified_by IN ('gkh', 'unverified')),
    contract_guid   text,
    contract_state  text,
    version_status  text,
    supplier_name   text,
    checked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organisation_id, contract_number)
);

CREATE TABLE auth.users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) <= 254),
    password_hash   text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    -- NULL only for platform admins (no customer organisation).
    organisation_id uuid REFERENCES auth.organisations (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('admin', 'operator', 'customer')),
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (organisation_id IS NOT NULL OR role = 'admin')
);
CREATE INDEX users_organisation ON auth.users (organisation_id);

-- Refresh tokens are stored as SHA-256 of the random token (a leaked table grants nothing). Each login
-- starts a family; each refresh uses one token (used_at) and issues its successor in the same family.
-- Presenting a used or revoked token again is reuse: the whole family is revoked (RFC 9700 §4.14.2).
CREATE TABLE auth.refresh_tokens (
    token_hash   bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    family_id    uuid NOT NULL,
    user_id      uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    revoked_at   timestamptz,
    revoke_reason text
);
CREATE INDEX refresh_tokens_family ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expiry ON auth.refresh_tokens (expires_at);

-- Failed logins per key ('account:<email>' / 'address:<ip>') in a fixed window, shared by every replica.
CREATE TABLE auth.login_failures (
    key          text PRIMARY KEY CHECK (length(key) <= 300),
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL CHECK (failures >= 0)
);

-- Definitive answers of external checks (found / not found), reused until expires_at so that a retried
-- registration does not spend the api-fns quota again. Errors are never cached.
CREATE TABLE auth.check_cache (
    service    text NOT NULL,
    key        text NOT NULL,
    result     jsonb NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, key)
);
