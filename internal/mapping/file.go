package mapping

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The file formats of `syncflow mappings import/export`.
const (
	FormatCSV  = "csv"
	FormatJSON = "json"
)

// csvHeader is the header row of the CSV format. An empty default_value means none.
var csvHeader = []string{"entity_name", "source_field", "target_field", "transformation", "default_value", "is_required"}

// ReadRules reads rules in format (csv or json). It reports every malformed row.
// A leading UTF-8 byte order mark (Excel's "CSV UTF-8") is skipped.
func ReadRules(r io.Reader, format string) ([]Rule, error) {
	br := bufio.NewReader(r)
	if bom, err := br.Peek(3); err == nil && string(bom) == "\uFEFF" {
		_, _ = br.Discard(3)
	}
	r = br
	switch format {
	case FormatJSON:
		dec := json.NewDecoder(r)
		dec.DisallowUnknownFields()
		var rules []Rule
		if err := dec.Decode(&rules); err != nil {
			return nil, fmt.Errorf("JSON: %w (want an array of {entity_name, source_field, target_field, transformation, default_value, is_required})", err)
		}
		return rules, nil
	case FormatCSV:
		cr := csv.NewReader(r)
		cr.FieldsPerRecord = -1
		rows, err := cr.ReadAll()
		if err != nil {
			return nil, fmt.Errorf("CSV: %w", err)
		}
		if len(rows) == 0 || !slices.Equal(trimAll(rows[0]), csvHeader) {
			return nil, fmt.Errorf("CSV: the first row must be the header %s", strings.Join(csvHeader, ","))
		}
		var rules []Rule
		var errs []error
		for i, row := range rows[1:] {
			line := i + 2
			if len(row) != len(csvHeader) {
				errs = append(errs, fmt.Errorf("CSV line %d: %d fields, want %d", line, len(row), len(csvHeader)))
				continue
			}
			row = trimAll(row)
			r := Rule{Entity: row[0], SourceField: row[1], TargetField: row[2], Transformation: row[3]}
			if row[4] != "" {
				r.DefaultValue = &row[4]
			}
			if row[5] != "" {
				b, err := strconv.ParseBool(row[5])
				if err != nil {
					errs = append(errs, fmt.Errorf("CSV line %d: is_required %q is not true or false", line, row[5]))
					continue
				}
				r.IsRequired = b
			}
			rules = append(rules, r)
		}
		return rules, errors.Join(errs...)
	}
	return nil, fmt.Errorf("unknown format %q: use csv or json", format)
}

// WriteRules writes rules in format (csv or json).
func WriteRules(w io.Writer, format string, rules []Rule) error {
	switch format {
	case FormatJSON:
		if rules == nil {
			rules = []Rule{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rules)
	case FormatCSV:
		cw := csv.NewWriter(w)
		_ = cw.Write(csvHeader)
		for _, r := range rules {
			def := ""
			if r.DefaultValue != nil {
				def = *r.DefaultValue
			}
			_ = cw.Write([]string{r.Entity, r.SourceField, r.TargetField, cmpOr(r.Transformation, "none"), def, strconv.FormatBool(r.IsRequired)})
		}
		cw.Flush()
		return cw.Error()
	}
	return fmt.Errorf("unknown format %q: use csv or json", format)
}

func trimAll(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strings.TrimSpace(x)
	}
	return out
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
