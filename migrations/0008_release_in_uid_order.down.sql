DROP INDEX bridge.ix_pending_children_parent;
CREATE INDEX ix_pending_children_parent ON bridge.pending_children (parent_entity, parent_bk_hash);
