-- The schema release 0.1 made: its migrations 1-4 as it ran them (bridge/storage/migrations.py of 0.1),
-- with the schema_migrations table it kept. Frozen: a test upgrades a database made from this in place.
-- Statements are separated by lines holding only ';'.
CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER NOT NULL PRIMARY KEY,
        description VARCHAR(255) NOT NULL,
        applied_at TIMESTAMP WITH TIME ZONE NOT NULL)
;
-- migration 1: links, meetings and encrypted secrets
CREATE TABLE link (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            pipedrive_user_id BIGINT NOT NULL,
            company_id BIGINT NOT NULL,
            user_name VARCHAR(255) NOT NULL,
            user_email VARCHAR(320) NOT NULL,
            api_domain VARCHAR(255),
            backend VARCHAR(40),
            status VARCHAR(32) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL
        )
;
CREATE INDEX ix_link_company_user ON link (company_id, pipedrive_user_id)
;
CREATE TABLE meeting (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            link_id VARCHAR(64) NOT NULL REFERENCES link (id),
            backend VARCHAR(40) NOT NULL,
            vendor_meeting_id VARCHAR(255) NOT NULL,
            start_time TIMESTAMP WITH TIME ZONE NOT NULL,
            duration INTEGER NOT NULL,
            state VARCHAR(16) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL
        )
;
CREATE INDEX ix_meeting_link_id ON meeting (link_id)
;
CREATE TABLE secret (
            scope VARCHAR(200) NOT NULL,
            name VARCHAR(100) NOT NULL,
            key_id VARCHAR(16) NOT NULL,
            ciphertext TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
            PRIMARY KEY (scope, name)
        )
;
CREATE INDEX ix_secret_key_id ON secret (key_id)
;
INSERT INTO schema_migrations (version, description, applied_at) VALUES (1, 'links, meetings and encrypted secrets', CURRENT_TIMESTAMP)
;
-- migration 2: one live link per Pipedrive user; token refresh bookkeeping
ALTER TABLE link ADD COLUMN tokens_refreshed_at TIMESTAMP WITH TIME ZONE
;
CREATE UNIQUE INDEX ux_link_active_user ON link (company_id, pipedrive_user_id) WHERE status = 'active'
;
INSERT INTO schema_migrations (version, description, applied_at) VALUES (2, 'one live link per Pipedrive user; token refresh bookkeeping', CURRENT_TIMESTAMP)
;
-- migration 3: recognise a retried postMeeting
ALTER TABLE meeting ADD COLUMN request_hash VARCHAR(64)
;
CREATE INDEX ix_meeting_link_request ON meeting (link_id, request_hash)
;
INSERT INTO schema_migrations (version, description, applied_at) VALUES (3, 'recognise a retried postMeeting', CURRENT_TIMESTAMP)
;
-- migration 4: leases: a token refresh claimed across replicas without holding a transaction
CREATE TABLE lease (
            name VARCHAR(320) NOT NULL PRIMARY KEY,
            holder VARCHAR(64) NOT NULL,
            expires_at FLOAT NOT NULL
        )
;
INSERT INTO schema_migrations (version, description, applied_at) VALUES (4, 'leases: a token refresh claimed across replicas without holding a transaction', CURRENT_TIMESTAMP)
;
