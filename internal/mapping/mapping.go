// Package mapping applies the field-mapping rules of bridge.field_mappings to a
// normalized record, producing the row written to ScheduleHub.
//
// # Rules
//
// A rule maps one source field (matched case-insensitively) to one target column,
// through a transformation: one step or a chain joined by "|", applied left to right
// (e.g. "trim|uppercase"). When the source value is NULL, default_value is used
// instead (and transformed like a sent value); when it is still NULL and the rule is
// required, the record fails at stage mapping. A failed conversion fails it too.
//
// Fields without a rule pass through under their lower-cased name, so an entity
// without rules passes all its fields through, and a rule only has to be written for
// a field that is renamed, converted, defaulted or required. A source field that has
// a rule is not passed through as well.
//
// # Transformations
//
//	none       the value as it is
//	trim       strip surrounding white space (strings only)
//	uppercase  upper-case a string
//	lowercase  lower-case a string
//	integer    a whole number: 42, "42", "42.0"; "42.5" fails
//	decimal    an exact decimal number: 12.50, "12.50", "-3e2"
//	boolean    true/false, Y/N, yes/no, 1/0, TRUE/FALSE (IFS spells it several ways)
//	date       YYYY-MM-DD, from RFC 3339, "YYYY-MM-DD", "YYYYMMDD" or a 14-digit objversion
//	timestamp  RFC 3339 in UTC, from RFC 3339, "YYYY-MM-DD HH:MM:SS" (UTC) or a 14-digit objversion
//
// It imports only normalize, catalog and event, never a driver: the rules are
// loaded by the store and handed in.
package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/syncflow/syncflow/internal/event"
	"github.com/syncflow/syncflow/internal/normalize"
)

// ErrMapping marks every mapping failure.
var ErrMapping = errors.New("mapping")

// Rule is one row of bridge.field_mappings.
type Rule struct {
	Entity         string  `json:"entity_name"`
	SourceField    string  `json:"source_field"`
	TargetField    string  `json:"target_field"`
	Transformation string  `json:"transformation"`
	DefaultValue   *string `json:"default_value"`
	IsRequired     bool    `json:"is_required"`
}

type step func(any) (any, error)

var steps = map[string]step{
	"none":      func(v any) (any, error) { return v, nil },
	"trim":      onString(strings.TrimSpace),
	"uppercase": onString(strings.ToUpper),
	"lowercase": onString(strings.ToLower),
	"integer":   toInteger,
	"decimal":   toDecimal,
	"boolean":   toBoolean,
	"date":      toDate,
	"timestamp": toTimestamp,
}

// Transformations returns the names of the known transformation steps.
func Transformations() []string {
	names := make([]string, 0, len(steps))
	for n := range steps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

var targetRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

type compiled struct {
	Rule
	source string // upper-cased
	chain  []step
	broken string // why the rule cannot be applied now ("" when it can)
}

// Set is an immutable, validated set of rules; a batch uses one Set throughout.
type Set struct {
	byEntity map[string][]compiled
}

// RuleRef names a rule: its entity, source field and target column.
type RuleRef struct{ Entity, SourceField, TargetField string }

// WithBroken returns a copy of the set in which the rules named fail, at stage
// mapping and with the reason given, every record they have a value for: a rule
// whose target column has gone would otherwise drop its values without a trace.
func (s *Set) WithBroken(broken map[RuleRef]string) *Set {
	out := &Set{byEntity: make(map[string][]compiled, len(s.byEntity))}
	for entity, rules := range s.byEntity {
		cs := make([]compiled, len(rules))
		for i, c := range rules {
			c.broken = broken[RuleRef{c.Entity, c.SourceField, c.TargetField}]
			cs[i] = c
		}
		out.byEntity[entity] = cs
	}
	return out
}

// Compile validates rules and returns them as a Set. It reports every bad rule.
func Compile(rules []Rule) (*Set, error) {
	s := &Set{byEntity: map[string][]compiled{}}
	var errs []error
	seen := map[[3]string]bool{}
	targets := map[[2]string]string{}
	for i, r := range rules {
		where := fmt.Sprintf("rule %d (%s.%s -> %s)", i+1, r.Entity, r.SourceField, r.TargetField)
		c := compiled{Rule: r, source: strings.ToUpper(strings.TrimSpace(r.SourceField))}
		if r.Entity == "" || c.source == "" {
			errs = append(errs, fmt.Errorf("%s: entity_name and source_field are required", where))
		}
		if !targetRE.MatchString(r.TargetField) {
			errs = append(errs, fmt.Errorf("%s: target_field must be a lower-case SQL identifier", where))
		}
		chain, err := parseChain(r.Transformation)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", where, err))
		} else if r.DefaultValue != nil {
			// A default is used when the field is missing; one its own
			// transformation refuses would fail every such record.
			var v any = *r.DefaultValue
			for _, st := range chain {
				if v, err = st(v); err != nil {
					errs = append(errs, fmt.Errorf("%s: default_value %q does not pass %s: %v", where, *r.DefaultValue, r.Transformation, err))
					break
				}
			}
		}
		c.chain = chain
		id := [3]string{r.Entity, c.source, r.TargetField}
		if seen[id] {
			errs = append(errs, fmt.Errorf("%s: duplicate rule", where))
		}
		seen[id] = true
		tk := [2]string{r.Entity, r.TargetField}
		if prev, ok := targets[tk]; ok && prev != c.source {
			errs = append(errs, fmt.Errorf("%s: target_field %s is already written from %s", where, r.TargetField, prev))
		}
		targets[tk] = c.source
		s.byEntity[r.Entity] = append(s.byEntity[r.Entity], c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Result names the kind of value a transformation chain produces, for checking
// it against the target column's type: integer, decimal, boolean, date or
// timestamp, or "" when the chain does not convert (the value keeps the form it
// was sent in, and the database converts it).
func Result(transformation string) string {
	kind := ""
	for _, name := range strings.Split(transformation, "|") {
		switch name = strings.TrimSpace(name); name {
		case "integer", "decimal", "boolean", "date", "timestamp":
			kind = name
		}
	}
	return kind
}

func parseChain(t string) ([]step, error) {
	if strings.TrimSpace(t) == "" {
		t = "none"
	}
	var chain []step
	for _, name := range strings.Split(t, "|") {
		st, ok := steps[strings.TrimSpace(name)]
		if !ok {
			return nil, fmt.Errorf("unknown transformation %q (known: %s; chain them with |)", name, strings.Join(Transformations(), ", "))
		}
		chain = append(chain, st)
	}
	return chain, nil
}

// Apply maps rec to a target row keyed by column name. With keysOnly (a delete) only
// the fields listed in keyFields are mapped and is_required is not enforced.
func (s *Set) Apply(rec normalize.Record, keyFields []string, keysOnly bool) (map[string]any, error) {
	var rules []compiled
	if s != nil {
		rules = s.byEntity[rec.Entity]
	}
	row := make(map[string]any, len(rec.Fields))
	ruled := make(map[string]bool, len(rules))
	for _, c := range rules {
		ruled[c.source] = true
	}
	for name, v := range rec.Fields {
		if ruled[name] || keysOnly && !slices.Contains(keyFields, name) {
			continue
		}
		row[strings.ToLower(name)] = v
	}
	for _, c := range rules {
		if keysOnly && !slices.Contains(keyFields, c.source) {
			continue
		}
		v := rec.Fields[c.source]
		if v == nil && c.DefaultValue != nil && c.broken == "" {
			// A broken rule's default is not written either: its column is gone,
			// and a record without the field has nothing to lose.
			v = *c.DefaultValue
		}
		if v == nil {
			if c.IsRequired && !keysOnly {
				return nil, fmt.Errorf("%w: required field %s is missing", ErrMapping, c.source)
			}
			if c.broken == "" {
				row[c.TargetField] = nil
			}
			continue
		}
		if c.broken != "" {
			return nil, fmt.Errorf("%w: field %s -> %s: %s", ErrMapping, c.source, c.TargetField, c.broken)
		}
		for _, st := range c.chain {
			out, err := st(v)
			if err != nil {
				return nil, fmt.Errorf("%w: field %s -> %s (%s): %v", ErrMapping, c.source, c.TargetField, c.Transformation, err)
			}
			v = out
		}
		row[c.TargetField] = v
	}
	return row, nil
}

func onString(f func(string) string) step {
	return func(v any) (any, error) {
		if s, ok := v.(string); ok {
			return f(s), nil
		}
		return v, nil
	}
}

func text(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return strings.TrimSpace(x), nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	default:
		return "", fmt.Errorf("cannot convert %T", v)
	}
}

func toInteger(v any) (any, error) {
	s, err := text(v)
	if err != nil {
		return nil, err
	}
	if _, isBool := v.(bool); isBool {
		return nil, fmt.Errorf("%v is not an integer", v)
	}
	if err := event.CheckNumber(s); err != nil {
		return nil, err
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || !r.IsInt() {
		return nil, fmt.Errorf("%q is not an integer", s)
	}
	if !r.Num().IsInt64() {
		return nil, fmt.Errorf("%q is out of range for an integer", s)
	}
	return r.Num().Int64(), nil
}

func toDecimal(v any) (any, error) {
	s, err := text(v)
	if err != nil {
		return nil, err
	}
	if _, isBool := v.(bool); isBool {
		return nil, fmt.Errorf("%v is not a decimal", v)
	}
	if err := event.CheckNumber(s); err != nil {
		return nil, err
	}
	if _, ok := new(big.Rat).SetString(s); !ok || strings.ContainsAny(s, "/") {
		return nil, fmt.Errorf("%q is not a decimal number", s)
	}
	// json.Number keeps every digit on the way to the target's numeric column.
	return json.Number(s), nil
}

func toBoolean(v any) (any, error) {
	if b, ok := v.(bool); ok {
		return b, nil
	}
	s, err := text(v)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(s) {
	case "true", "t", "y", "yes", "1":
		return true, nil
	case "false", "f", "n", "no", "0":
		return false, nil
	}
	return nil, fmt.Errorf("%q is not a boolean", s)
}

func parseTime(v any) (time.Time, error) {
	s, err := text(v)
	if err != nil {
		return time.Time{}, err
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "20060102150405", "2006-01-02", "20060102"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date or timestamp", s)
}

func toDate(v any) (any, error) {
	t, err := parseTime(v)
	if err != nil {
		return nil, err
	}
	return t.Format(time.DateOnly), nil
}

func toTimestamp(v any) (any, error) {
	t, err := parseTime(v)
	if err != nil {
		return nil, err
	}
	return t.UTC().Format(time.RFC3339Nano), nil
}
