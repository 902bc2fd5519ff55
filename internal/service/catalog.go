package service

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/store"
)

// storedCatalog reads and parses the newest stored catalog.
func storedCatalog(ctx context.Context, st *store.Store) (*catalog.Catalog, int, error) {
	v, err := st.LatestCatalog(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the stored catalog: %w", err)
	}
	cat, err := catalog.Parse(v.Document)
	if err != nil {
		return nil, 0, fmt.Errorf("stored catalog version %d is invalid (store a fixed one with `syncflow catalog apply FILE`):\n%w", v.Version, err)
	}
	return cat, v.Version, nil
}

// watchCatalog follows the stored catalog: a new version, or `syncflow catalog
// refresh`, arrives by NOTIFY, and the stored version is looked at every
// MappingResync anyway.
func (s *Service) watchCatalog(ctx context.Context) error {
	return s.st.WatchCatalog(ctx, s.cfg.MappingResync, s.log, func() { s.reloadCatalog(ctx, true) })
}

// reloadCatalog puts the newest stored catalog in force. With force (a NOTIFY: a
// new version, or a refresh; and the watcher's periodic look), it also reads
// the target tables' columns again when the version has not changed. A catalog
// that does not fit the target tables is reported and the one in force is kept.
// The decode dead letters of subjects the catalog's entities own are made due
// once, so that the retry worker applies them; the entity consumers follow
// (entityConsumers).
func (s *Service) reloadCatalog(ctx context.Context, force bool) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	log := s.log
	latest, err := s.st.LatestCatalog(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("reading the stored catalog failed; keeping the one in force", "version", s.catalogVersion.Load(), "err", err)
		}
		return
	}
	current := int(s.catalogVersion.Load())
	if !force && (latest.Version == current || latest.Version == s.refusedVersion) {
		return
	}
	refuse := func(msg string, err error) {
		// Said once per version at error level; a forced look says it again
		// quietly until the version fits or another replaces it.
		level := slog.LevelError
		if latest.Version == s.refusedVersion {
			level = slog.LevelDebug
		}
		log.Log(ctx, level, msg, "stored_version", latest.Version, "version", current, "err", err)
		s.refusedVersion = latest.Version
	}
	cat, err := catalog.Parse(latest.Document)
	if err != nil {
		refuse("the stored catalog is invalid; keeping the one in force", err)
		return
	}
	// The target tables' columns, read again: a column added since is written
	// from now on. Nothing of a catalog that does not fit is put in use.
	if err := s.st.PrepareTargets(ctx, cat); err != nil {
		if latest.Version == current {
			refuse("the target tables no longer fit the catalog in force: their batches are held until the tables are back, or a catalog without the entity is applied", err)
		} else {
			refuse("the stored catalog does not fit the target tables; keeping the one in force", err)
		}
		return
	}
	s.refusedVersion = 0
	old := s.catalog.Load()
	added, removed := diffEntities(old, cat)
	s.catalog.Store(cat)
	if latest.Version != current {
		log.Info("catalog version in force", "version", latest.Version, "previous", current, "added", added, "removed", removed)
		s.catalogVersion.Store(int64(latest.Version))
	} else {
		log.Debug("catalog read again, with the target tables' columns", "version", latest.Version)
	}
	s.checkRules(ctx)
	// Messages of an entity's subjects dead-lettered as unknown (before the
	// entity joined the catalog, or by a replica that had not read it yet) are
	// retried: the entity is known now.
	var subjects []string
	for _, e := range cat.Names() {
		for _, source := range event.Sources {
			subjects = append(subjects, source.Subject(e))
		}
	}
	if n, err := s.st.RetryDeadLettersOfSubjects(ctx, subjects); err != nil {
		if ctx.Err() == nil {
			log.Warn("making the dead letters of the catalog's subjects due failed; retry them with `syncflow dlq retry --stage decode`", "err", err)
		}
	} else if n > 0 {
		log.Info("dead letters of subjects the catalog's entities own are due for a retry", "dead_letters", n)
	}
	s.entities.notify()
}

// diffEntities names the entities b has and a has not, and those a has and b
// has not.
func diffEntities(a, b *catalog.Catalog) (added, removed []string) {
	for _, n := range b.Names() {
		if _, ok := a.Entity(n); !ok {
			added = append(added, n)
		}
	}
	for _, n := range a.Names() {
		if _, ok := b.Entity(n); !ok {
			removed = append(removed, n)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}
