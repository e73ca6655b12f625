package product

import (
	"errors"
	"testing"
)

func TestParsePrice(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Price
		wantErr error
	}{
		{name: "integer", in: "500EUR", want: Price{"500", "EUR"}},
		{name: "decimals kept", in: "12.50USD", want: Price{"12.50", "USD"}},
		{name: "zero", in: "0EUR", want: Price{"0", "EUR"}},
		{name: "zero with fraction", in: "0.000001JPY", want: Price{"0.000001", "JPY"}},
		{name: "fifteen digits", in: "999999999999999CHF", want: Price{"999999999999999", "CHF"}},
		{name: "sixteen digits", in: "1000000000000000CHF", wantErr: ErrPriceFormat},
		{name: "seven decimals", in: "1.0000001EUR", wantErr: ErrPriceFormat},
		{name: "leading zero", in: "0500EUR", wantErr: ErrPriceFormat},
		{name: "negative", in: "-5EUR", wantErr: ErrPriceFormat},
		{name: "plus", in: "+5EUR", wantErr: ErrPriceFormat},
		{name: "lower-case code", in: "5eur", wantErr: ErrPriceFormat},
		{name: "no amount", in: "EUR", wantErr: ErrPriceFormat},
		{name: "empty", in: "", wantErr: ErrPriceFormat},
		{name: "no code", in: "500", wantErr: ErrPriceFormat},
		{name: "space", in: "500 EUR", wantErr: ErrPriceFormat},
		{name: "trailing point", in: "500.EUR", wantErr: ErrPriceFormat},
		{name: "leading point", in: ".5EUR", wantErr: ErrPriceFormat},
		{name: "exponent", in: "5e3EUR", wantErr: ErrPriceFormat},
		{name: "comma", in: "5,00EUR", wantErr: ErrPriceFormat},
		{name: "two codes", in: "5EUREUR", wantErr: ErrPriceFormat},
		{name: "unknown code", in: "5ABC", wantErr: ErrUnknownCurrency},
		{name: "code first", in: "EUR500", wantErr: ErrPriceFormat},
		{name: "unicode digits", in: "٥EUR", wantErr: ErrPriceFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePrice(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("ParsePrice(%q) error = %v, want %v", tc.in, err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("ParsePrice(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if err == nil && got.String() != tc.in {
				t.Errorf("String() = %q, want the input %q back", got.String(), tc.in)
			}
		})
	}
}

// FuzzParsePrice checks that whatever ParsePrice accepts renders back to the
// same text and stays within the database's limits.
func FuzzParsePrice(f *testing.F) {
	for _, s := range []string{"500EUR", "12.50USD", "0EUR", "0.000001JPY", "999999999999999CHF", "-5EUR", "5ABC", "", "٥EUR", "1.EUR"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrice(s)
		if err != nil {
			if !errors.Is(err, ErrPriceFormat) && !errors.Is(err, ErrUnknownCurrency) {
				t.Fatalf("ParsePrice(%q): unclassified error %v", s, err)
			}
			return
		}
		if p.String() != s {
			t.Fatalf("ParsePrice(%q).String() = %q", s, p.String())
		}
		if len(p.Currency) != 3 || p.Amount == "" || len(p.Amount) > maxPriceIntegerDigits+1+maxPriceDecimals {
			t.Fatalf("ParsePrice(%q) = %+v out of limits", s, p)
		}
		if again, err := ParsePrice(p.String()); err != nil || again != p {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}
