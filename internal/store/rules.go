package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/syncflow/syncflow/internal/catalog"
	"github.com/syncflow/syncflow/internal/mapping"
)

// column is a target table's column and its type.
type column struct {
	name, typ string // typ as format_type gives it: "integer", "numeric(12,2)"
	typname   string // the base type's name: int4, numeric, timestamptz
	category  string // pg_type.typcategory: N numeric, S string, B boolean, D date/time...
}

const columnTypesSQL = `
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, t.typcategory
FROM pg_attribute a
JOIN pg_type d ON d.oid = a.atttypid
JOIN pg_type t ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END -- a domain: its base type
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`

// CheckRules checks field-mapping rules against the live target tables: the
// target column exists, and its type takes what the transformation produces. A
// rule that fails either would drop or fail every value it maps, so the error
// lists each such rule, what is wrong and, for a misspelled column, the columns
// it may have meant. Rules of entities not in the catalog are not checked here.
func (s *Store) CheckRules(ctx context.Context, cat *catalog.Catalog, rules []mapping.Rule) error {
	problems, err := s.RuleProblems(ctx, cat, rules)
	if err != nil {
		return err
	}
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = p.String()
	}
	if len(lines) > 0 {
		return errors.New(strings.Join(lines, "\n"))
	}
	return nil
}

// RuleProblem is a rule the target table cannot take, and why.
type RuleProblem struct {
	Ref    mapping.RuleRef
	Index  int // the rule's place in the list checked, from 1
	Reason string
}

func (p RuleProblem) String() string {
	return fmt.Sprintf("rule %d (%s %s -> %s): %s", p.Index, p.Ref.Entity, p.Ref.SourceField, p.Ref.TargetField, p.Reason)
}

// RuleProblems lists the rules the live target tables cannot take (see
// CheckRules).
func (s *Store) RuleProblems(ctx context.Context, cat *catalog.Catalog, rules []mapping.Rule) ([]RuleProblem, error) {
	tables := map[string][]column{}
	var problems []RuleProblem
	for i, r := range rules {
		e, ok := cat.Entity(r.Entity)
		if !ok {
			continue
		}
		cols, ok := tables[e.Name]
		if !ok {
			var err error
			if cols, err = s.columns(ctx, e); err != nil {
				return nil, err
			}
			tables[e.Name] = cols
		}
		p := RuleProblem{Ref: mapping.RuleRef{Entity: r.Entity, SourceField: r.SourceField, TargetField: r.TargetField}, Index: i + 1}
		at := slices.IndexFunc(cols, func(c column) bool { return c.name == r.TargetField })
		if at < 0 {
			p.Reason = fmt.Sprintf("%s has no column %s", e.Target.QualifiedName(), r.TargetField)
			if near := nearest(r.TargetField, cols); len(near) > 0 {
				p.Reason += " (did you mean " + strings.Join(near, " or ") + "?)"
			}
			p.Reason += ": its values would be dropped"
			problems = append(problems, p)
			continue
		}
		if why := incompatible(mapping.Result(r.Transformation), cols[at]); why != "" {
			p.Reason = fmt.Sprintf("column %s is %s, %s", r.TargetField, cols[at].typ, why)
			problems = append(problems, p)
		}
	}
	return problems, nil
}

func (s *Store) columns(ctx context.Context, e *catalog.Entity) ([]column, error) {
	ident := pgx.Identifier{e.Target.Schema, e.Target.Table}.Sanitize()
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("entity %q: target table %s does not exist (create it, e.g. with deploy/schedulehub.sql)", e.Name, e.Target.QualifiedName())
	}
	rows, err := s.pool.Query(ctx, columnTypesSQL, ident)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		err := r.Scan(&c.name, &c.typ, &c.typname, &c.category)
		return c, err
	})
}

// incompatible says why a column cannot take what a transformation produces, or "".
// A text column takes anything; a chain that does not convert leaves the
// conversion to the database, which refuses a bad value row by row.
func incompatible(result string, c column) string {
	if result == "" || c.category == "S" || c.typname == "json" || c.typname == "jsonb" {
		return ""
	}
	ok := false
	switch result {
	case "integer":
		ok = c.category == "N"
	case "decimal":
		ok = c.category == "N" && !slices.Contains([]string{"int2", "int4", "int8", "oid"}, c.typname)
		if !ok && c.category == "N" {
			return "which cannot take the fractions decimal keeps: use integer (a fraction then fails the record at mapping, with a dead letter)"
		}
	case "boolean":
		ok = c.category == "B"
	case "date", "timestamp":
		ok = c.category == "D"
	}
	if ok {
		return ""
	}
	return fmt.Sprintf("which cannot take the %s that %s produces: change the transformation, or the column", article(result), result)
}

func article(kind string) string {
	switch kind {
	case "integer":
		return "integers"
	case "decimal":
		return "decimal numbers"
	case "boolean":
		return "true/false values"
	case "date":
		return "dates"
	}
	return "timestamps"
}

// nearest returns the columns whose names are closest to name, if any is close.
func nearest(name string, cols []column) []string {
	best, limit := []string(nil), max(2, len(name)/3)
	for _, c := range cols {
		d := distance(name, c.name)
		switch {
		case d > limit:
		case d < limit:
			best, limit = []string{c.name}, d
		default:
			best = append(best, c.name)
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
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

// TargetComparison is one entity's target table beside what fills it, for
// `syncflow catalog check`.
type TargetComparison struct {
	Entity  string         `json:"entity"`
	Table   string         `json:"table"`
	Problem string         `json:"problem,omitempty"`
	Columns []TargetColumn `json:"columns,omitempty"`
	// RulesWithoutColumn are mapping rules whose target column is missing.
	RulesWithoutColumn []string `json:"rules_without_column,omitempty"`
	// ObservedUnmapped are event fields seen that no rule maps and no column
	// takes (see Drift).
	ObservedUnmapped []string `json:"observed_unmapped,omitempty"`
}

// TargetColumn is a column of a target table and what writes it.
type TargetColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// FilledBy says what writes the column: the business key, a mapping rule,
	// the soft delete, or an event field of the same name (pass-through).
	FilledBy string `json:"filled_by,omitempty"`
}

// CompareTargets lists, for each catalog entity, its target's columns and what
// fills each: the key, a rule, a delete, or fields passed through by name.
func (s *Store) CompareTargets(ctx context.Context, cat *catalog.Catalog) ([]TargetComparison, error) {
	rules, err := s.LoadMappings(ctx)
	if err != nil {
		return nil, classify(err)
	}
	observed, err := s.observedFields(ctx)
	if err != nil {
		return nil, err
	}
	var out []TargetComparison
	for _, e := range cat.Entities() {
		t := TargetComparison{Entity: e.Name, Table: e.Target.QualifiedName()}
		cols, err := s.columns(ctx, e)
		if err != nil {
			t.Problem = err.Error()
			out = append(out, t)
			continue
		}
		byColumn := map[string][]string{}
		for _, r := range rules {
			if r.Entity == e.Name {
				byColumn[r.TargetField] = append(byColumn[r.TargetField], "rule "+r.SourceField+" ("+cmp.Or(r.Transformation, "none")+")")
			}
		}
		have := map[string]bool{}
		for _, c := range cols {
			have[c.name] = true
			tc := TargetColumn{Name: c.name, Type: c.typ}
			switch {
			case slices.Contains(e.Target.Key, c.name):
				tc.FilledBy = "business key"
			case len(byColumn[c.name]) > 0:
				tc.FilledBy = strings.Join(byColumn[c.name], ", ")
			case e.Delete == catalog.DeleteSoft && c.name == e.SoftDeleteColumn:
				tc.FilledBy = "soft delete"
			case slices.Contains(observed[e.Name], strings.ToUpper(c.name)):
				tc.FilledBy = "field " + strings.ToUpper(c.name) + " (by name)"
			}
			t.Columns = append(t.Columns, tc)
		}
		for col, rs := range byColumn {
			if !have[col] {
				for _, r := range rs {
					t.RulesWithoutColumn = append(t.RulesWithoutColumn, r+" -> "+col)
				}
			}
		}
		slices.Sort(t.RulesWithoutColumn)
		for _, f := range observed[e.Name] {
			if !have[strings.ToLower(f)] && !mappedFrom(rules, e.Name, f) {
				t.ObservedUnmapped = append(t.ObservedUnmapped, f)
			}
		}
		out = append(out, t)
	}
	return out, nil
}

func mappedFrom(rules []mapping.Rule, entity, field string) bool {
	return slices.ContainsFunc(rules, func(r mapping.Rule) bool { return r.Entity == entity && strings.EqualFold(r.SourceField, field) })
}
