package catalog

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// shape describes what a part of the catalog file must look like, in the
// catalog's own terms, so that a mistake is reported as the operator wrote it
// ("line 7: entity "items": unknown setting rowvresion (did you mean
// rowversion?)") rather than in terms of the Go types behind the parser.
type shape struct {
	kind string // scalar, list (of scalars), maps (a list of mappings), map, entities
	// what is how the error says what is expected.
	what string
	keys map[string]*shape // map: the settings it may hold
	item *shape            // maps, entities: each element
}

var (
	nameList    = &shape{kind: "list", what: "a list of field names, e.g. [ORDER_NO, CONTRACT]"}
	columnList  = &shape{kind: "list", what: "a list of column names, e.g. [order_no]"}
	entityShape = &shape{kind: "map", what: "an entity's settings", keys: map[string]*shape{
		"key":        nameList,
		"rowversion": {kind: "scalar", what: "one of timestamp, objversion, date, number"},
		"parents": {kind: "maps", what: "a list of parents, e.g. [{entity: sites, fields: [CONTRACT]}]", item: &shape{kind: "map", what: "a parent", keys: map[string]*shape{
			"entity": {kind: "scalar", what: "the parent entity's name"},
			"fields": nameList,
		}}},
		"target": {kind: "map", what: "the target table, e.g. {table: schedulehub.items, key: [part_no]}", keys: map[string]*shape{
			"table": {kind: "scalar", what: "schema.table"},
			"key":   columnList,
		}},
		"delete":             {kind: "scalar", what: "hard or soft"},
		"soft_delete_column": {kind: "scalar", what: "a column name"},
		"upsert":             {kind: "scalar", what: "merge or replace"},
		"time_zone":          {kind: "scalar", what: "an IANA time zone, e.g. Europe/Stockholm"},
		"consumers":          consumersShape,
	}}
	fileShape = &shape{kind: "map", what: "the catalog", keys: map[string]*shape{
		"source_system":    {kind: "scalar", what: "a name, e.g. oracle_ifs"},
		"source_time_zone": {kind: "scalar", what: "an IANA time zone, e.g. Europe/Stockholm"},
		"consumers":        consumersShape,
		"entities":         {kind: "entities", what: "the entities, each by its name", item: entityShape},
	}}
)

// checkShape reports every place where data does not have the catalog's shape.
func checkShape(data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("catalog: not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return errors.New("catalog: the file is empty")
	}
	var errs []error
	walkShape(doc.Content[0], fileShape, "", &errs)
	return errors.Join(errs...)
}

func walkShape(n *yaml.Node, s *shape, where string, errs *[]error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	bad := func(format string, args ...any) {
		*errs = append(*errs, fmt.Errorf("catalog line %d: %s"+format, append([]any{n.Line, where}, args...)...))
	}
	want := func() { bad("must be %s", s.what) }
	switch s.kind {
	case "scalar":
		if n.Kind != yaml.ScalarNode {
			want()
		}
	case "list":
		if n.Kind != yaml.SequenceNode {
			want()
			return
		}
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				walkShape(c, &shape{kind: "scalar", what: "a name"}, where, errs)
			}
		}
	case "maps":
		if n.Kind != yaml.SequenceNode {
			want()
			return
		}
		for i, c := range n.Content {
			walkShape(c, s.item, fmt.Sprintf("%s[%d]: ", strings.TrimSuffix(where, ": "), i+1), errs)
		}
	case "entities":
		if n.Kind != yaml.MappingNode {
			want()
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			walkShape(n.Content[i+1], s.item, fmt.Sprintf("entity %q: ", n.Content[i].Value), errs)
		}
	case "map":
		if n.Kind != yaml.MappingNode {
			want()
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub, ok := s.keys[k.Value]
			switch {
			case !ok:
				msg := fmt.Sprintf("catalog line %d: %sunknown setting %s", k.Line, where, k.Value)
				if near := Closest(k.Value, slices.Collect(maps.Keys(s.keys))); near != "" {
					msg += " (did you mean " + near + "?)"
				}
				*errs = append(*errs, errors.New(msg+"; the settings here are "+strings.Join(slices.Sorted(maps.Keys(s.keys)), ", ")))
			case seen[k.Value]:
				*errs = append(*errs, fmt.Errorf("catalog line %d: %s%s is set twice", k.Line, where, k.Value))
			default:
				seen[k.Value] = true
				walkShape(v, sub, where+k.Value+": ", errs)
			}
		}
	}
}

// Closest returns the candidate nearest to s by edit distance, the first in
// sorted order among equals, or "" when none is within a third of its length
// (at least two edits): a typo, not another word.
func Closest(s string, candidates []string) string {
	best, bestD := "", max(2, len(s)/3)+1
	for _, c := range slices.Sorted(slices.Values(candidates)) {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
