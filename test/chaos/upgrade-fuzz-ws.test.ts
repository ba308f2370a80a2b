import { wsUnderTest } from '../transport-under-test.ts';
import { upgradeFuzz } from './upgrade-fuzz.ts';

upgradeFuzz(wsUnderTest);
