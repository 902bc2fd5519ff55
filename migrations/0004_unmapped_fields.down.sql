DROP TABLE IF EXISTS bridge.unmapped_fields;
