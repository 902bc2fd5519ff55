// Package catalog loads and validates the entity catalog: for every APISmith entity,
// its business key, how its rowversion is sent, its parents and its ScheduleHub target.
//
// A catalog is validated as a whole before anything uses it. An unknown parent, a
// cycle among parents, a parent reference whose fields do not match the parent's key,
// a missing key, or an identifier that is not a plain lower-case SQL name is refused
// with an error that names the entity and the problem.
//
// It imports only event, and no driver.
package catalog

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // time zones resolve the same on every machine, containers included

	"go.yaml.in/yaml/v3"

	"github.com/syncflow/syncflow/internal/event"
)

// DeleteMode says what a delete event does to the target row.
type DeleteMode string

const (
	// DeleteHard removes the target row (the default).
	DeleteHard DeleteMode = "hard"
	// DeleteSoft sets the entity's soft_delete_column to the time of the delete.
	DeleteSoft DeleteMode = "soft"
)

// Catalog is a validated set of entities.
type Catalog struct {
	// SourceSystem is the default source_system of events (default "oracle_ifs").
	SourceSystem string
	// SourceTimeZone is the ERP database's time zone, in which objversions are
	// read (default UTC); an entity may name its own.
	SourceTimeZone *time.Location
	// Consumers are the catalog-wide consumer settings, by source name.
	Consumers map[string]ConsumerSettings
	entities  map[string]*Entity
	order     []string // parents before children, then by name
}

// Entity is one catalog block.
type Entity struct {
	Name string
	// Key holds the business-key fields in order, upper-cased.
	Key []string
	// RowVersion is how rowversions of this entity are sent: timestamp (RFC 3339, the
	// default), objversion (14 digits), date (either) or number.
	RowVersion event.VersionKind
	// Parents are the entities that must be applied before this one.
	Parents []Parent
	// Target is the ScheduleHub table the entity is written to.
	Target Target
	// Delete says whether a delete removes or marks the target row.
	Delete DeleteMode
	// SoftDeleteColumn is the timestamptz column set by a soft delete.
	SoftDeleteColumn string
	// Upsert says what an upsert does to the target columns an event does not
	// carry: merge keeps them (the default), replace resets them.
	Upsert UpsertMode
	// TimeZone is the time zone objversions of this entity are read in: its
	// time_zone, else the catalog's source_time_zone, else UTC.
	TimeZone *time.Location
	// Consumers are the settings of its durable consumers, by source name: the
	// entity's own consumers block over the catalog's over DefaultConsumers.
	Consumers map[string]ConsumerSettings
}

// UpsertMode says what an upsert does to the columns absent from an event.
type UpsertMode string

const (
	// UpsertMerge keeps the target's values of the columns an event does not
	// carry: an event that sends some fields changes only those (the default).
	UpsertMerge UpsertMode = "merge"
	// UpsertReplace sets every column an event does not carry (but the key and
	// the soft-delete column) to its default, NULL without one: for entities
	// whose events always carry the whole row, so that a field dropped from
	// the row is dropped from the target too.
	UpsertReplace UpsertMode = "replace"
)

// Parent names a parent entity and the child's fields that hold its key.
type Parent struct {
	Entity string
	Fields []string
}

// Target is a ScheduleHub table.
type Target struct {
	Schema string
	Table  string
	// Key holds the target's key columns, one per business-key field, in the same order.
	Key []string
}

// QualifiedName returns schema.table.
func (t Target) QualifiedName() string { return t.Schema + "." + t.Table }

// Entity returns the named entity.
func (c *Catalog) Entity(name string) (*Entity, bool) {
	e, ok := c.entities[name]
	return e, ok
}

// Unknown explains that name is not an entity of the catalog: the entity it is
// nearest to, when one is near (a typo, a singular), and the entities there are.
func (c *Catalog) Unknown(name string) string {
	msg := fmt.Sprintf("entity %q is not in the catalog", name)
	if near := Closest(name, c.order); near != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", near)
	}
	return msg + "; its entities: " + strings.Join(c.order, ", ")
}

// Names returns the entity names, every parent before its children.
func (c *Catalog) Names() []string { return slices.Clone(c.order) }

// Entities returns the entities in Names order.
func (c *Catalog) Entities() []*Entity {
	out := make([]*Entity, 0, len(c.order))
	for _, n := range c.order {
		out = append(out, c.entities[n])
	}
	return out
}

// Children returns the entities that name parent among their parents.
func (c *Catalog) Children(parent string) []*Entity {
	var out []*Entity
	for _, n := range c.order {
		for _, p := range c.entities[n].Parents {
			if p.Entity == parent {
				out = append(out, c.entities[n])
				break
			}
		}
	}
	return out
}

type fileFormat struct {
	SourceSystem   string                 `yaml:"source_system"`
	SourceTimeZone string                 `yaml:"source_time_zone"`
	Consumers      consumersBlock         `yaml:"consumers"`
	Entities       map[string]entityBlock `yaml:"entities"`
}

type entityBlock struct {
	Key        []string `yaml:"key"`
	RowVersion string   `yaml:"rowversion"`
	Parents    []struct {
		Entity string   `yaml:"entity"`
		Fields []string `yaml:"fields"`
	} `yaml:"parents"`
	Target struct {
		Table string   `yaml:"table"`
		Key   []string `yaml:"key"`
	} `yaml:"target"`
	Delete           string         `yaml:"delete"`
	SoftDeleteColumn string         `yaml:"soft_delete_column"`
	Upsert           string         `yaml:"upsert"`
	TimeZone         string         `yaml:"time_zone"`
	Consumers        consumersBlock `yaml:"consumers"`
}

var (
	identRE  = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	entityRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)
	fieldRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$#]{0,127}$`)
)

// Parse reads and validates a catalog in YAML. The error lists every problem
// found, by line and in the catalog's own terms.
func Parse(data []byte) (*Catalog, error) {
	if err := checkShape(data); err != nil {
		return nil, err
	}
	var f fileFormat
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		// checkShape has seen every key and kind; what is left is a value the
		// YAML library cannot read (e.g. a number too large).
		return nil, fmt.Errorf("catalog: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	c := &Catalog{SourceSystem: f.SourceSystem, entities: map[string]*Entity{}}
	if c.SourceSystem == "" {
		c.SourceSystem = "oracle_ifs"
	}
	var errs []error
	bad := func(entity, format string, args ...any) {
		errs = append(errs, fmt.Errorf("catalog: entity %q: "+format, append([]any{entity}, args...)...))
	}
	c.SourceTimeZone = time.UTC
	if f.SourceTimeZone != "" {
		loc, err := time.LoadLocation(f.SourceTimeZone)
		if err != nil {
			errs = append(errs, fmt.Errorf("catalog: source_time_zone: %q is not a time zone (an IANA name such as Europe/Stockholm)", f.SourceTimeZone))
		} else {
			c.SourceTimeZone = loc
		}
	}
	if len(f.Entities) == 0 {
		return nil, errors.New("catalog: no entities defined")
	}
	c.Consumers = f.Consumers.resolve(DefaultConsumers, func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("catalog: "+format, args...))
	})
	for _, name := range slices.Sorted(maps.Keys(f.Entities)) {
		b := f.Entities[name]
		e := &Entity{
			Name:             name,
			Key:              upper(b.Key),
			RowVersion:       event.VersionKind(strings.ToLower(b.RowVersion)),
			Delete:           DeleteMode(strings.ToLower(b.Delete)),
			SoftDeleteColumn: b.SoftDeleteColumn,
			Upsert:           UpsertMode(strings.ToLower(b.Upsert)),
		}
		e.Consumers = b.Consumers.resolve(c.Consumers, func(format string, args ...any) { bad(name, format, args...) })
		e.TimeZone = c.SourceTimeZone
		if b.TimeZone != "" {
			if loc, err := time.LoadLocation(b.TimeZone); err != nil {
				bad(name, "time_zone: %q is not a time zone (an IANA name such as Europe/Stockholm)", b.TimeZone)
			} else {
				e.TimeZone = loc
			}
		}
		if !entityRE.MatchString(name) {
			bad(name, "name must be a lower-case identifier (letters, digits, underscore)")
		}
		if len(e.Key) == 0 {
			bad(name, "key: at least one business-key field is required")
		}
		for _, k := range e.Key {
			if !fieldRE.MatchString(k) {
				bad(name, "key: bad field name %q", k)
			}
		}
		if dup := duplicate(e.Key); dup != "" {
			bad(name, "key: field %q listed twice", dup)
		}
		switch {
		case e.RowVersion == "":
			e.RowVersion = event.VersionTimestamp
		case !slices.Contains(event.VersionKinds, e.RowVersion):
			bad(name, "rowversion: %q is not one of timestamp, objversion, date, number", b.RowVersion)
		}
		switch e.Delete {
		case "":
			e.Delete = DeleteHard
		case DeleteHard:
		case DeleteSoft:
			if !identRE.MatchString(e.SoftDeleteColumn) {
				bad(name, "soft_delete_column: %q is not a lower-case SQL identifier (required for delete: soft)", e.SoftDeleteColumn)
			}
		default:
			bad(name, "delete: %q is not one of hard, soft", b.Delete)
		}
		switch e.Upsert {
		case "":
			e.Upsert = UpsertMerge
		case UpsertMerge, UpsertReplace:
		default:
			bad(name, "upsert: %q is not one of merge, replace", b.Upsert)
		}
		schema, table, ok := strings.Cut(b.Target.Table, ".")
		if !ok || !identRE.MatchString(schema) || !identRE.MatchString(table) {
			bad(name, "target.table: %q must be schema.table with lower-case SQL identifiers", b.Target.Table)
		} else if schema == "bridge" {
			bad(name, "target.table: %q is in SyncFlow's own bridge schema", b.Target.Table)
		}
		e.Target = Target{Schema: schema, Table: table, Key: b.Target.Key}
		if len(b.Target.Key) != len(e.Key) {
			bad(name, "target.key: %d columns for %d business-key fields", len(b.Target.Key), len(e.Key))
		}
		for _, k := range b.Target.Key {
			if !identRE.MatchString(k) {
				bad(name, "target.key: %q is not a lower-case SQL identifier", k)
			}
		}
		for _, p := range b.Parents {
			e.Parents = append(e.Parents, Parent{Entity: p.Entity, Fields: upper(p.Fields)})
		}
		c.entities[name] = e
	}
	for _, name := range slices.Sorted(maps.Keys(c.entities)) {
		e := c.entities[name]
		seen := map[string]bool{}
		for _, p := range e.Parents {
			parent, ok := c.entities[p.Entity]
			switch {
			case p.Entity == name:
				bad(name, "parents: names itself as its parent")
			case !ok:
				bad(name, "parents: unknown parent entity %q", p.Entity)
			case len(p.Fields) != len(parent.Key):
				bad(name, "parents: %q has a %d-field key but %d fields are given", p.Entity, len(parent.Key), len(p.Fields))
			case seen[p.Entity]:
				bad(name, "parents: %q listed twice", p.Entity)
			}
			seen[p.Entity] = true
			for _, fld := range p.Fields {
				if !fieldRE.MatchString(fld) {
					bad(name, "parents: %q: bad field name %q", p.Entity, fld)
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	order, err := topoOrder(c.entities)
	if err != nil {
		return nil, err
	}
	c.order = order
	return c, nil
}

// topoOrder sorts entities parents first; a cycle is an error naming its members.
func topoOrder(entities map[string]*Entity) ([]string, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			cycle := append(path[slices.Index(path, name):], name)
			return fmt.Errorf("catalog: entity %q: parents form a cycle: %s", name, strings.Join(cycle, " -> "))
		}
		state[name] = visiting
		for _, p := range entities[name].Parents {
			if err := visit(p.Entity, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(entities)) {
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func upper(fields []string) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = strings.ToUpper(strings.TrimSpace(f))
	}
	return out
}

func duplicate(xs []string) string {
	seen := map[string]bool{}
	for _, x := range xs {
		if seen[x] {
			return x
		}
		seen[x] = true
	}
	return ""
}
