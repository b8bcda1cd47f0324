-- The PostgreSQL peer of livestock (crates/load/src/postgres.rs installs it; every statement is
-- idempotent). Each operation is one function call: one round trip and one transaction, as a
-- Redis script is one EVALSHA. Invariant, per deal: stock = available + held + sold.
--
-- Locks are always taken in the order hold -> user count -> deal, so no two operations wait
-- on each other in a cycle: reserve locks the user count then the deal (its hold row is new);
-- confirm, release and expire lock the hold first.

CREATE TABLE IF NOT EXISTS deals (
    id text PRIMARY KEY,
    stock bigint NOT NULL,
    available bigint NOT NULL,
    held bigint NOT NULL DEFAULT 0,
    sold bigint NOT NULL DEFAULT 0,
    per_user_limit integer,
    hold_ttl_ms bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS holds (
    id bigserial PRIMARY KEY,
    deal_id text NOT NULL,
    user_id text NOT NULL,
    qty integer NOT NULL,
    state text NOT NULL, -- held | confirmed | released | expired
    expires_at_ms bigint NOT NULL
);

-- The expiry index: the live holds by expiry (Redis' sorted set of expiries).
CREATE INDEX IF NOT EXISTS holds_live_by_expiry ON holds (expires_at_ms) WHERE state = 'held';

-- Units held or bought per user and deal, kept for deals with a per-user limit.
CREATE TABLE IF NOT EXISTS user_counts (
    deal_id text NOT NULL,
    user_id text NOT NULL,
    units integer NOT NULL,
    PRIMARY KEY (deal_id, user_id)
);

CREATE OR REPLACE FUNCTION ls_now_ms() RETURNS bigint LANGUAGE sql AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- reserve: 'ok' and the hold's id, or a refusal code. A refusal after a write (the per-user
-- count, then the stock) raises SQLSTATE LS409 with the code as its message, which rolls the
-- whole transaction back.
CREATE OR REPLACE FUNCTION ls_reserve(p_deal text, p_user text, p_qty integer, p_ttl_ms bigint,
                                      OUT code text, OUT hold_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer;
    v_available bigint;
    v_units integer;
BEGIN
    -- The sold-out path reads one row and writes nothing (no lock, no commit record).
    SELECT d.per_user_limit, d.available INTO v_limit, v_available FROM deals d WHERE d.id = p_deal;
    IF NOT FOUND THEN code := 'unknown_deal'; RETURN; END IF;
    IF v_available = 0 THEN code := 'sold_out'; RETURN; END IF;
    IF v_available < p_qty THEN code := 'insufficient_stock'; RETURN; END IF;
    IF v_limit IS NOT NULL THEN
        INSERT INTO user_counts AS u (deal_id, user_id, units) VALUES (p_deal, p_user, p_qty)
        ON CONFLICT (deal_id, user_id) DO UPDATE SET units = u.units + excluded.units
        RETURNING u.units INTO v_units;
        IF v_units > v_limit THEN
            RAISE EXCEPTION USING ERRCODE = 'LS409', MESSAGE = 'per_user_limit';
        END IF;
    END IF;
    -- The stock check that counts: under the deal's row lock.
    UPDATE deals SET available = available - p_qty, held = held + p_qty
    WHERE id = p_deal AND available >= p_qty;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LS409', MESSAGE =
            CASE WHEN (SELECT available FROM deals WHERE id = p_deal) = 0
                 THEN 'sold_out' ELSE 'insufficient_stock' END;
    END IF;
    INSERT INTO holds (deal_id, user_id, qty, state, expires_at_ms)
    VALUES (p_deal, p_user, p_qty, 'held', ls_now_ms() + p_ttl_ms)
    RETURNING id INTO hold_id;
    code := 'ok';
END $$;

-- Ends a held hold (already locked by the caller) as released or expired: its units go back on
-- sale and leave the user's count.
CREATE OR REPLACE FUNCTION ls_give_back(p_hold bigint, p_deal text, p_user text, p_qty integer,
                                        p_state text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE holds SET state = p_state WHERE id = p_hold;
    UPDATE user_counts SET units = units - p_qty WHERE deal_id = p_deal AND user_id = p_user;
    UPDATE deals SET held = held - p_qty, available = available + p_qty WHERE id = p_deal;
END $$;

-- confirm (p_confirm) or release: 'ok' or a refusal code. A hold past its expiry that the
-- reaper has not reached yet is expired here, as livestock does.
CREATE OR REPLACE FUNCTION ls_resolve(p_hold bigint, p_confirm boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
BEGIN
    SELECT * INTO h FROM holds WHERE id = p_hold FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_hold'; END IF;
    IF h.state <> 'held' THEN RETURN 'hold_' || h.state; END IF;
    IF h.expires_at_ms <= ls_now_ms() THEN
        PERFORM ls_give_back(h.id, h.deal_id, h.user_id, h.qty, 'expired');
        RETURN 'hold_expired';
    END IF;
    IF NOT p_confirm THEN
        PERFORM ls_give_back(h.id, h.deal_id, h.user_id, h.qty, 'released');
        RETURN 'ok';
    END IF;
    UPDATE holds SET state = 'confirmed' WHERE id = p_hold;
    UPDATE deals SET held = held - h.qty, sold = sold + h.qty WHERE id = h.deal_id;
    RETURN 'ok';
END $$;

-- expire: ends up to p_max holds past their expiry, earliest first, skipping holds another
-- transaction is confirming or releasing; then gives their units back, user counts first and
-- deals last (two statements, so that order holds). Returns how many holds it ended.
CREATE OR REPLACE FUNCTION ls_expire(p_max integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_deals text[];
    v_users text[];
    v_qtys integer[];
BEGIN
    WITH due AS (
        SELECT id FROM holds
        WHERE state = 'held' AND expires_at_ms <= ls_now_ms()
        ORDER BY expires_at_ms LIMIT p_max
        FOR UPDATE SKIP LOCKED
    ), ended AS (
        UPDATE holds h SET state = 'expired' FROM due WHERE h.id = due.id
        RETURNING h.deal_id, h.user_id, h.qty
    )
    SELECT array_agg(deal_id), array_agg(user_id), array_agg(qty)
    INTO v_deals, v_users, v_qtys FROM ended;
    IF v_deals IS NULL THEN RETURN 0; END IF;
    UPDATE user_counts u SET units = u.units - x.qty
    FROM (SELECT d, usr, sum(q) AS qty FROM unnest(v_deals, v_users, v_qtys) AS t(d, usr, q)
          GROUP BY 1, 2) x
    WHERE u.deal_id = x.d AND u.user_id = x.usr;
    UPDATE deals SET held = held - x.qty, available = available + x.qty
    FROM (SELECT d, sum(q) AS qty FROM unnest(v_deals, v_qtys) AS t(d, q) GROUP BY 1) x
    WHERE deals.id = x.d;
    RETURN cardinality(v_deals);
END $$;
