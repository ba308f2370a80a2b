import { uwsUnderTest } from '../transport-under-test.ts';
import { upgradeFuzz } from './upgrade-fuzz.ts';

upgradeFuzz(await uwsUnderTest());
