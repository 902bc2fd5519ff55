-- Event fields that no mapping rule maps and no target column takes: counted
-- per entity and field by every replica (at most 50 fields per entity, the
-- rest under "(other)"), so that a field the ERP starts sending is seen, never
-- dropped in silence. `syncflow drift` lists them.
CREATE TABLE bridge.unmapped_fields (
    entity_name text NOT NULL,
    field_name text NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    seen_count bigint NOT NULL,
    -- One value the field carried, cut to 200 characters.
    sample_value text,
    CONSTRAINT pk_unmapped_fields PRIMARY KEY (entity_name, field_name),
    CONSTRAINT ck_unmapped_fields_seen CHECK (seen_count > 0 AND last_seen_at >= first_seen_at)
);
