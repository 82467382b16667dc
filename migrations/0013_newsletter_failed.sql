-- A newsletter whose templates do not render in the worker (over the template budget, or broken
-- since the web checked them) stops as `failed`, with the reason, instead of going to `sent`
-- with every e-mail failed.
ALTER TABLE newsletters DROP CONSTRAINT newsletters_status_check;
ALTER TABLE newsletters ADD CONSTRAINT newsletters_status_check
    CHECK (status IN ('draft', 'scheduled', 'sending', 'sent', 'cancelled', 'failed'));
ALTER TABLE newsletters ADD COLUMN failure text;
