-- The bridge's state in the database: its publish cursor, and the wake-up
-- flag that lets writers skip pg_notify while the bridge reads the change log
-- continuously.

-- +goose Up
-- +goose StatementBegin

-- product_change_wakeup is the "wake-up wanted" flag: 2 = notify on every
-- change (the bridge is idle and LISTENs), 1 = do not notify (the bridge reads
-- the log continuously). It is a sequence, not a table row, because sequences
-- are not transactional: setval is visible at once to every transaction,
-- whatever its snapshot (a REPEATABLE READ writer would read a table flag as
-- of its snapshot and could miss the switch). Starts at 2: with no bridge
-- running, writers notify, as before this migration.
CREATE SEQUENCE product_change_wakeup AS integer MINVALUE 1 MAXVALUE 2 START 2 NO CYCLE;

-- bridge_cursor: every change with seq <= cursor_seq has been acknowledged by
-- JetStream (or can never appear); published_high is the highest seq
-- acknowledged, so a restarted bridge knows up to where it must check the
-- stream before publishing again. One row.
CREATE TABLE bridge_cursor (
    id             integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    cursor_seq     bigint      NOT NULL,
    published_high bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bridge_cursor (cursor_seq, published_high) VALUES (0, 0);

CREATE OR REPLACE FUNCTION notify_event_on_products_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change_seq     bigint := nextval('product_changes_seq');
    change_at      timestamptz := clock_timestamp();
    row_image      products;
    change_version bigint;
    event          text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_image := OLD;
        change_version := OLD.version + 1;
    ELSE
        row_image := NEW;
        change_version := NEW.version;
    END IF;

    event := '{"seq":' || change_seq
        || ',"action":"' || TG_OP || '"'
        || ',"productId":' || row_image.product_id
        || ',"version":' || change_version
        || ',"changedAt":"' || to_char(change_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'
        || ',"product":' || product_json(row_image)
        || '}';

    INSERT INTO product_changes (seq, product_id, action, version, changed_at, event)
    VALUES (change_seq, row_image.product_id, TG_OP, change_version, change_at, event::json);

    -- A transaction that notifies takes a global lock at commit, so commits
    -- serialise: notify only while the bridge asks for wake-ups.
    IF (SELECT last_value FROM product_change_wakeup) = 2 THEN
        IF octet_length(event) <= 7999 THEN
            PERFORM pg_notify('product_change', event);
        ELSE
            PERFORM pg_notify('product_change',
                '{"seq":' || change_seq || ',"productId":' || row_image.product_id || ',"ref":true}');
        END IF;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION notify_event_on_products_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change_seq     bigint := nextval('product_changes_seq');
    change_at      timestamptz := clock_timestamp();
    row_image      products;
    change_version bigint;
    event          text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_image := OLD;
        change_version := OLD.version + 1;
    ELSE
        row_image := NEW;
        change_version := NEW.version;
    END IF;

    event := '{"seq":' || change_seq
        || ',"action":"' || TG_OP || '"'
        || ',"productId":' || row_image.product_id
        || ',"version":' || change_version
        || ',"changedAt":"' || to_char(change_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'
        || ',"product":' || product_json(row_image)
        || '}';

    INSERT INTO product_changes (seq, product_id, action, version, changed_at, event)
    VALUES (change_seq, row_image.product_id, TG_OP, change_version, change_at, event::json);

    IF octet_length(event) <= 7999 THEN
        PERFORM pg_notify('product_change', event);
    ELSE
        PERFORM pg_notify('product_change',
            '{"seq":' || change_seq || ',"productId":' || row_image.product_id || ',"ref":true}');
    END IF;
    RETURN NULL;
END
$$;
DROP TABLE bridge_cursor;
DROP SEQUENCE product_change_wakeup;
-- +goose StatementEnd
