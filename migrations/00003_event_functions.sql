-- One author for each wire shape. The change event, the SNAPSHOT message and
-- the NOTIFY payload are built by the functions below, beside product_json,
-- and nowhere else: the trigger and the gateway's catch-up call them. A later
-- migration that changes a shape replaces only its function.
--
-- change.EventVersion and change.ChangedAt (pkg/change) read these bytes
-- without decoding them: "version" comes right after "productId" and before
-- the product object, "changedAt" is UTC with microseconds. pkg/change's
-- tests call these functions and hold them to that.
--
-- Up keeps migration 00002's trigger function under the name
-- notify_event_on_products_update_00002 (unused) so that Down can put it
-- back without restating it.

-- +goose Up
-- +goose StatementBegin

-- change_event is the event published on product.<id>: for a delete, p is
-- the last state and change_version one more than its version.
CREATE FUNCTION change_event(change_seq bigint, change_action text, change_version bigint,
                             change_at timestamptz, p products) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '{"seq":' || change_seq
        || ',"action":"' || change_action || '"'
        || ',"productId":' || p.product_id
        || ',"version":' || change_version
        || ',"changedAt":"' || to_char(change_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'
        || ',"product":' || product_json(p)
        || '}'
$$;

-- snapshot_event is the current state of a product as the gateway sends it
-- to a client that asks for a snapshot or resumes: event-shaped, without seq
-- and changedAt.
CREATE FUNCTION snapshot_event(p products) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '{"action":"SNAPSHOT","productId":' || p.product_id
        || ',"version":' || p.version
        || ',"product":' || product_json(p)
        || '}'
$$;

-- change_notice is the NOTIFY payload of a change: the event itself, or,
-- when it is too large for NOTIFY (payloads must stay under 8000 bytes), a
-- reference the bridge reads from the change log.
CREATE FUNCTION change_notice(event text, change_seq bigint, product_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length(event) <= 7999 THEN event
                ELSE '{"seq":' || change_seq || ',"productId":' || product_id || ',"ref":true}'
           END
$$;

ALTER FUNCTION notify_event_on_products_update() RENAME TO notify_event_on_products_update_00002;

-- notify_event_on_products_update writes the change log row and, while the
-- bridge asks for wake-ups (product_change_wakeup = 2, see 00002), notifies
-- it, in the same transaction as the row change.
CREATE FUNCTION notify_event_on_products_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change_seq     bigint := nextval('product_changes_seq');
    change_at      timestamptz := clock_timestamp();
    -- NEW is null for a delete: its event carries the last state, OLD, and a
    -- version one more than that state's, so that it orders after every update.
    row_image      products := COALESCE(NEW, OLD);
    change_version bigint := row_image.version + CASE TG_OP WHEN 'DELETE' THEN 1 ELSE 0 END;
    event          text := change_event(change_seq, TG_OP, change_version, change_at, row_image);
BEGIN
    INSERT INTO product_changes (seq, product_id, action, version, changed_at, event)
    VALUES (change_seq, row_image.product_id, TG_OP, change_version, change_at, event::json);

    -- A transaction that notifies takes a global lock at commit, so commits
    -- serialise: notify only while the bridge asks for wake-ups.
    IF (SELECT last_value FROM product_change_wakeup) = 2 THEN
        PERFORM pg_notify('product_change', change_notice(event, change_seq, row_image.product_id));
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER notify_event_on_products_update ON products;
CREATE TRIGGER notify_event_on_products_update
    AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION notify_event_on_products_update();
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DROP TRIGGER notify_event_on_products_update ON products;
DROP FUNCTION notify_event_on_products_update();
ALTER FUNCTION notify_event_on_products_update_00002() RENAME TO notify_event_on_products_update;
CREATE TRIGGER notify_event_on_products_update
    AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION notify_event_on_products_update();
DROP FUNCTION change_notice(text, bigint, bigint);
DROP FUNCTION snapshot_event(products);
DROP FUNCTION change_event(bigint, text, bigint, timestamptz, products);
-- +goose StatementEnd
