-- The parents' index of the parked children gains uid as its last column, so
-- that a release reads each parent's first children in uid order from the
-- index and no more: a release of a parent with 300,000 children waiting
-- takes 1,000 of them a round, and each round reads those 1,000, not all of
-- them. Every statement that found children by their parent's columns still
-- does (they lead the index).
--
-- In one transaction: the queue holds children waiting for their parents (a
-- few thousand rows, usually), and parking and releases wait for the rebuild.
DROP INDEX bridge.ix_pending_children_parent;
CREATE INDEX ix_pending_children_parent ON bridge.pending_children (parent_entity, parent_bk_hash, uid);
